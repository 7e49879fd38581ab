"""Cost of the gps / dss samplers against the dense approach of the original Sample4Geo code.

Each case runs in a fresh subprocess; "peak" is the process's peak RSS (VmHWM, reset once the
inputs exist) minus its RSS at that point, i.e. what the method itself allocates.

    flock /tmp/geokit-cpu.lock .venv/bin/python benchmarks/samplers_cost.py            # all cases
    .venv/bin/python benchmarks/samplers_cost.py --cases gps_kdtree:35532 build_ours:100000

Cases (NAME:N, dss_stream also NAME:N:CHUNK):
- gps_kdtree / gps_faiss: neighbour table (k=128) by geodesic order, geokit_plugins.samplers.gps
- gps_dense: dense N×N float64 haversine matrix (what sklearn's pairwise returns) + torch.topk
  (k=128), the original's calc_distance_* approach (radians here, so the same result as ours)
- dss_stream: 1024-d, N×N mining through geokit.retrieval.search (k=129), geokit_plugins.samplers.dss
- dss_dense: the same similarities as one dense float32 N×N matrix, then torch.topk (k=129)
- build_ours / build_pop0: one epoch of batches (128, select 64, range 128) from a GPS table,
  geokit_plugins.samplers._neighbour_batches vs a straightforward list.pop(0) builder (§4b of the notes)
- precision: faiss (float32) vs kdtree (float64) neighbour agreement for points in a 5 km box
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import subprocess
import sys
import time

import numpy as np

DEFAULT = [
    "gps_kdtree:35532",
    "gps_kdtree:1000000",
    "gps_faiss:35532",
    "gps_dense:10000",
    "gps_dense:35532",
    "dss_stream:35532",
    "dss_dense:35532",
    "build_ours:100000",
    "build_pop0:100000",
    "build_ours:1000000",
    "precision:35532",
]


def reset_peak() -> int:
    """Reset VmHWM to the current RSS (Linux clear_refs 5) and return that RSS in KiB, so the
    peak measured afterwards excludes temporaries of building the inputs."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    return rss_kib("VmRSS")


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def us_points(n: int, seed: int = 0, box: tuple[float, float, float, float] = (25, 49, -125, -67)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.c_[rng.uniform(box[0], box[1], n), rng.uniform(box[2], box[3], n)]


def dense_haversine_topk(latlon: np.ndarray, k: int) -> np.ndarray:
    import torch

    lat, lon = np.radians(latlon[:, 0]), np.radians(latlon[:, 1])
    n = len(lat)
    dist = np.empty((n, n), dtype=np.float64)
    for s in range(0, n, 512):  # row blocks: only the matrix itself is N×N
        e = min(s + 512, n)
        h = (
            np.sin((lat[None, :] - lat[s:e, None]) / 2) ** 2
            + np.cos(lat[s:e, None]) * np.cos(lat[None, :]) * np.sin((lon[None, :] - lon[s:e, None]) / 2) ** 2
        )
        dist[s:e] = 2 * np.arcsin(np.sqrt(np.clip(h, 0, 1)))
    np.fill_diagonal(dist, dist.max())
    return torch.topk(torch.from_numpy(dist), k, dim=1, largest=False).indices.numpy()


def list_pop0_builder(
    neighbours: dict[int, list[int]], n: int, batch_size: int, select: int, range_: int, seed: int
) -> list[list[int]]:
    """A straightforward builder in the style of the original: one id per pair (CVUSA-like)."""
    rnd = random.Random(seed)
    table = copy.deepcopy(neighbours)  # the original copies its neighbour dict every epoch
    pool = list(range(n))
    rnd.shuffle(pool)
    used: set[int] = set()
    batches, cur, cur_set, fails = [], [], set(), 0
    half = select // 2
    while pool and fails < 1024:
        u = pool.pop(0)
        if u in used:
            continue
        if u in cur_set:
            pool.append(u)
            fails += 1
            continue
        fails = 0
        cur.append(u)
        cur_set.add(u)
        used.add(u)
        nb = table[u][:range_]
        cands = nb[:half] + rnd.sample(nb[half:], min(select - half, len(nb) - half))
        for c in cands:
            if len(cur) >= batch_size:
                break
            if c not in cur_set and c not in used:
                cur.append(c)
                cur_set.add(c)
                used.add(c)
        if len(cur) >= batch_size:
            batches.append(cur)
            cur, cur_set = [], set()
    return batches


def run_case(name: str, n: int, chunk: int | None = None) -> dict:
    import faiss  # noqa: F401  (imports outside the timed and measured part)
    import scipy.spatial  # noqa: F401
    import torch

    from geokit.data import TrainSet

    out: dict = {"case": name, "n": n}
    if name.startswith("gps_"):
        pts = us_points(n)
        base = reset_peak()
        t = time.perf_counter()
        if name == "gps_dense":
            table = dense_haversine_topk(pts, 128)
        else:
            from geokit_plugins.samplers.gps import gps_neighbours

            table = gps_neighbours(pts, 128, backend=name[4:])
        out["seconds"] = time.perf_counter() - t
        out["shape"] = list(table.shape)
    elif name.startswith("dss_"):
        import torch

        rng = np.random.default_rng(0)
        ref = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((n, 1024), dtype=np.float32)), dim=1)
        qry = torch.nn.functional.normalize(
            ref + 0.5 * torch.from_numpy(rng.standard_normal((n, 1024), dtype=np.float32)), dim=1
        )
        pair_ref = np.arange(n)
        base = reset_peak()
        t = time.perf_counter()
        if name == "dss_stream":
            from geokit_plugins.samplers.dss import mine_neighbours

            table = mine_neighbours(qry, ref, pair_ref, 128, chunk_size=chunk)
            out["chunk"] = chunk or "auto"
        else:
            sim = torch.empty((n, n), dtype=torch.float32)
            for s in range(0, n, 1000):  # the original: 1000-row chunks into one dense matrix
                sim[s : s + 1000] = qry[s : s + 1000] @ ref.t()
            top = torch.topk(sim, 129, dim=1).indices.numpy()
            drop = top == pair_ref[:, None]
            keep = np.argsort(drop, axis=1, kind="stable")[:, :128]
            table = np.take_along_axis(top, keep, 1)
        out["seconds"] = time.perf_counter() - t
        out["shape"] = list(table.shape)
    elif name.startswith("build_"):
        from geokit_plugins.samplers._neighbour_batches import build_neighbour_batches
        from geokit_plugins.samplers.gps import gps_neighbours

        pts = us_points(n)
        table = gps_neighbours(pts, 128)
        train = TrainSet([""] * n, [""] * n, np.arange(n))
        as_dict = {i: row for i, row in enumerate(table.tolist())} if name == "build_pop0" else None
        base = reset_peak()
        t = time.perf_counter()
        if name == "build_ours":
            b = build_neighbour_batches(
                train, 128, table, np.random.default_rng(0), key_of_pair=train.pair_reference, select=64, range_=128
            )
            placed = sum(len(x) for x in b)
        else:
            b = list_pop0_builder(as_dict, n, 128, 64, 128, seed=0)
            placed = sum(len(x) for x in b)
        out["seconds"] = time.perf_counter() - t
        out["batches"], out["pairs_placed"] = len(b), placed
    elif name == "precision":
        from geokit_plugins.samplers.gps import gps_neighbours

        pts = us_points(n, box=(40.70, 40.745, -74.03, -73.97))  # ~5 km box in Manhattan
        base = reset_peak()
        a = gps_neighbours(pts, 10, backend="kdtree")
        b = gps_neighbours(pts, 10, backend="faiss")
        out["top1_agree_%"] = 100 * float((a[:, 0] == b[:, 0]).mean())
        out["top10_set_agree_%"] = 100 * float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, b)]))
        out["seconds"] = 0.0
    else:
        raise SystemExit(f"unknown case {name}")
    out["peak_mib"] = round((rss_kib("VmHWM") - base) / 1024, 1)
    out["seconds"] = round(out["seconds"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="*", default=DEFAULT)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        name, n, *chunk = args.one.split(":")
        print(json.dumps(run_case(name, int(n), int(chunk[0]) if chunk else None)))
        return
    for case in args.cases:
        proc = subprocess.run([sys.executable, __file__, "--one", case], capture_output=True, text=True)
        line = (
            proc.stdout.strip().splitlines()[-1]
            if proc.returncode == 0 and proc.stdout.strip()
            else json.dumps({"case": case, "error": (proc.stderr or "").strip().splitlines()[-1:]})
        )
        print(line, flush=True)


if __name__ == "__main__":
    main()
