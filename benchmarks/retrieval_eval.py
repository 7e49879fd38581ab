"""Evaluation at VIGOR-like scale: geokit's streaming metrics vs the original's dense procedure.

Random 1024-d embeddings (queries = their true reference + noise, so the metrics are not
trivial). Each measurement runs in its own subprocess so peak RSS is its own (``ru_maxrss``);
"base" is the RSS after importing torch and loading the embeddings, so peak − base is what the
method itself needs.

    flock /tmp/geokit-cpu.lock .venv/bin/python benchmarks/retrieval_eval.py \
        --queries 20000 --references 40000 --dense --faiss --fp16

Methods:
- ``geokit``: ``geokit.metrics.retrieval_metrics`` with its defaults (matmul blocks, counts in the
  same pass; on AMX CPUs bfloat16 blocks that re-score undecided references in float32).
- ``geokit-fp32``: the same with ``bf16_screen=False`` (float32 blocks only).
- ``dense``: the original's procedure: the Q×R float32 matrix built in 1000-row blocks, then a
  per-query numpy loop counting references above the true match (R@1/5/10, R@1%).
- ``matmul``: the fp32 matrix-multiply rate of this CPU (best of 5 of 4096×1024 @ 1024×8192),
  and Q·R·D·2 / that rate, the time no exact method can beat.
- ``search``: exact top-10, geokit's blocks vs faiss ``IndexFlatIP`` (the choice of one path).
- ``fp16``: the metrics with both embedding sets stored as float16.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_data(
    folder: Path,
    n_q: int,
    n_r: int,
    dim: int,
    noise: float,
    seed: int = 0,
    positives: int = 1,
    query_noise: float = 4.0,
) -> None:
    rng = np.random.default_rng(seed)
    if positives > 1:  # University-1652 style: each place has `positives` true references
        n_places = n_r // positives
        centres = rng.standard_normal((n_places, dim), dtype=np.float32) / np.sqrt(dim)
        place = np.repeat(np.arange(n_places), positives)
        ref = centres[place] + 2.0 * rng.standard_normal((len(place), dim), dtype=np.float32) / np.sqrt(dim)
        ref /= np.linalg.norm(ref, axis=1, keepdims=True)
        q_place = rng.choice(n_places, n_q, replace=n_q > n_places)
        qry = centres[q_place] + query_noise * rng.standard_normal((n_q, dim), dtype=np.float32) / np.sqrt(dim)
        qry /= np.linalg.norm(qry, axis=1, keepdims=True)
        np.save(folder / "query.npy", qry)
        np.save(folder / "reference.npy", ref)
        np.save(folder / "positives.npy", q_place[:, None] * positives + np.arange(positives)[None, :])
        return
    ref = np.empty((n_r, dim), dtype=np.float32)
    for s in range(0, n_r, 8192):
        x = rng.standard_normal((min(8192, n_r - s), dim), dtype=np.float32)
        ref[s : s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    pos = rng.integers(0, n_r, n_q)
    qry = np.empty((n_q, dim), dtype=np.float32)
    for s in range(0, n_q, 8192):
        p = pos[s : s + 8192]
        x = ref[p] + noise * rng.standard_normal((len(p), dim), dtype=np.float32) / np.sqrt(dim)
        qry[s : s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.save(folder / "query.npy", qry)
    np.save(folder / "reference.npy", ref)
    np.save(folder / "positives.npy", pos)


def dense_original(q, r, pos) -> dict:
    """The original's evaluation: dense Q×R fp32 matrix, then a per-query loop."""
    import torch

    qt, rt = torch.from_numpy(q), torch.from_numpy(r)
    sim = torch.empty(len(q), len(r), dtype=torch.float32)
    for s in range(0, len(q), 1000):
        sim[s : s + 1000] = qt[s : s + 1000] @ rt.T
    sim = sim.numpy()
    ranks = np.empty(len(q), dtype=np.int64)
    for i in range(len(q)):
        ranks[i] = np.sum(sim[i] > sim[i, pos[i]])
    out = {f"R@{k}": float(100.0 * np.mean(ranks < k)) for k in (1, 5, 10)}
    out["R@1%"] = float(100.0 * np.mean(ranks < max(1, len(r) // 100)))
    out["queries"], out["references"] = len(q), len(r)
    return out


def dense_university(q, r, pos) -> dict:
    """The original's University-1652 evaluation: per query, gallery scores, a full argsort,
    CMC and Market-1501 trapezoid AP."""
    ranks = np.empty(len(q), dtype=np.int64)
    aps = np.empty(len(q))
    for i in range(len(q)):
        score = r @ q[i]
        order = np.argsort(score)[::-1]
        rows_good = np.flatnonzero(np.isin(order, pos[i]))
        ranks[i] = rows_good[0]
        ap = 0.0
        for j, row in enumerate(rows_good):
            precision = (j + 1) / (row + 1)
            old = j / row if row != 0 else 1.0
            ap += (old + precision) / 2 / len(rows_good)
        aps[i] = ap
    out = {f"R@{k}": float(100.0 * np.mean(ranks < k)) for k in (1, 5, 10)}
    out["R@1%"] = float(100.0 * np.mean(ranks < max(1, len(r) // 100)))
    out["AP"] = float(100.0 * aps.mean())
    out["queries"], out["references"] = len(q), len(r)
    return out


def matmul_rate() -> float:
    import torch

    a, b = torch.randn(4096, 1024), torch.randn(1024, 8192)
    out = torch.empty(4096, 8192)
    torch.mm(a, b, out=out)
    best = min(_timed(lambda: torch.mm(a, b, out=out)) for _ in range(5))
    return 2 * 4096 * 1024 * 8192 / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def child(method: str, folder: Path, chunk: int | None) -> dict:
    import torch  # imported before "base" so the base RSS includes it

    import geokit.metrics
    import geokit.retrieval  # noqa: F401

    torch.randn(64, 64) @ torch.randn(64, 64)  # BLAS start-up is not part of any method

    q = np.load(folder / "query.npy")
    r = np.load(folder / "reference.npy")
    pos = np.load(folder / "positives.npy")
    base = rss_mb()
    res: dict = {"method": method, "base_rss_mb": round(base), "embeddings_mb": round((q.nbytes + r.nbytes) / 2**20)}
    t0 = time.perf_counter()
    if method in ("geokit", "geokit-fp32"):
        from geokit.metrics import retrieval_metrics

        res["metrics"] = retrieval_metrics(
            q, r, pos, chunk_size=chunk, bf16_screen=False if method == "geokit-fp32" else None
        )
    elif method == "fp16":
        from geokit.metrics import retrieval_metrics

        q16, r16 = q.astype(np.float16), r.astype(np.float16)
        del q, r
        base = res["base_rss_mb"] = round(rss_mb())
        t0 = time.perf_counter()
        res["metrics"] = retrieval_metrics(q16, r16, pos, chunk_size=chunk)
    elif method == "dense":
        res["metrics"] = dense_original(q, r, pos) if pos.ndim == 1 else dense_university(q, r, pos)
    elif method == "search":
        from geokit.retrieval import search

        _, gi = search(q, r, 10, chunk_size=chunk)
        res["geokit_s"] = time.perf_counter() - t0
        import faiss

        t1 = time.perf_counter()
        index = faiss.IndexFlatIP(r.shape[1])
        index.add(r)
        _, fi = index.search(q, 10)
        res["faiss_s"] = time.perf_counter() - t1
        res["top1_agree"] = float(np.mean(gi[:, 0] == fi[:, 0]))
        res["top10_set_agree"] = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(gi, fi)]))
    elif method == "matmul":
        res["flops_per_s"] = matmul_rate()
    res["seconds"] = time.perf_counter() - t0
    res["peak_rss_mb"] = round(peak_mb())
    res["peak_minus_base_mb"] = round(peak_mb() - base)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queries", type=int, default=20000)
    ap.add_argument("--references", type=int, default=40000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--noise", type=float, default=7.5, help="query noise (relative norm)")
    ap.add_argument("--chunk", type=int, default=None)
    ap.add_argument(
        "--positives",
        type=int,
        default=1,
        help="true references per query (>1: University-1652 style, AP, dense = per-query argsort)",
    )
    ap.add_argument(
        "--query-noise",
        type=float,
        default=4.0,
        help="with --positives > 1: query noise around its place's centre (4: easy, 8: hard)",
    )
    ap.add_argument("--dense", action="store_true", help="also run the dense original procedure")
    ap.add_argument("--faiss", action="store_true", help="also compare exact top-10 with faiss")
    ap.add_argument("--fp16", action="store_true", help="also run with float16 embeddings")
    ap.add_argument("--repeat", type=int, default=1, help="geokit runs (best time reported)")
    ap.add_argument("--chunks", default="", help="also time geokit at these chunk sizes (comma list)")
    ap.add_argument("--child", nargs=2, metavar=("METHOD", "FOLDER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]), args.chunk)))
        return

    import torch

    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"{args.queries} x {args.references} x {args.dim}, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="geokit-bench-") as tmp:
        folder = Path(tmp)
        make_data(
            folder,
            args.queries,
            args.references,
            args.dim,
            args.noise,
            positives=args.positives,
            query_noise=args.query_noise,
        )

        def run(method: str, chunk: int | None = args.chunk) -> dict:
            cmd = [sys.executable, __file__, "--child", method, str(folder)]
            if chunk:
                cmd += ["--chunk", str(chunk)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            res = json.loads(out.strip().splitlines()[-1])
            print(json.dumps(res), flush=True)
            return res

        rate = run("matmul")["flops_per_s"]
        geo = min((run("geokit") for _ in range(args.repeat)), key=lambda x: x["seconds"])
        limit = 2 * args.queries * args.references * args.dim / rate
        summary = {
            "matmul_gflops": round(rate / 1e9, 1),
            "limit_s": round(limit, 2),
            "geokit_s": round(geo["seconds"], 2),
            "geokit_over_limit": round(geo["seconds"] / limit, 3),
            "geokit_peak_minus_base_mb": geo["peak_minus_base_mb"],
        }
        fp32 = run("geokit-fp32")
        summary.update(
            fp32_s=round(fp32["seconds"], 2),
            fp32_over_limit=round(fp32["seconds"] / limit, 3),
            fp32_peak_minus_base_mb=fp32["peak_minus_base_mb"],
            fp32_identical_metrics=fp32["metrics"] == geo["metrics"],
        )
        if args.dense:
            dense = run("dense")
            summary.update(
                dense_s=round(dense["seconds"], 2),
                dense_peak_minus_base_mb=dense["peak_minus_base_mb"],
                speedup=round(dense["seconds"] / geo["seconds"], 2),
                identical_metrics=dense["metrics"] == geo["metrics"],
                max_metric_difference=max(abs(dense["metrics"][k] - geo["metrics"][k]) for k in geo["metrics"]),
            )
        if args.fp16:
            half = run("fp16")
            summary["fp16_metric_change"] = {
                k: round(half["metrics"][k] - geo["metrics"][k], 4)
                for k in geo["metrics"]
                if k.startswith(("R@", "AP"))
            }
        if args.faiss:
            s = run("search")
            summary.update(
                search_geokit_s=round(s["geokit_s"], 2),
                search_faiss_s=round(s["faiss_s"], 2),
                search_top10_set_agree=s["top10_set_agree"],
            )
        for c in filter(None, args.chunks.split(",")):
            res = run("geokit", int(c))
            summary[f"geokit_s_chunk_{c}"] = round(res["seconds"], 2)
            summary[f"geokit_peak_minus_base_mb_chunk_{c}"] = res["peak_minus_base_mb"]
        summary["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
        print("summary " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
