"""Approximate indexes vs exact search: recall, query throughput, build time and size.

Clustered unit embeddings (``--clusters`` centres plus noise, closer to real embeddings than
uniform random ones, whose neighbours are all equally far), queries = noisy copies of database
vectors. Recall@k = overlap of the index's top-k with the exact top-k
(``geokit.retrieval.search``), averaged over queries. Indexes are built through
``geokit.retrieval.build_index`` (the code ``geokit index build`` runs), with default parameters
unless given.

    flock /tmp/geokit-cpu.lock .venv/bin/python benchmarks/retrieval_ann.py --n 100000 --dim 1024
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def make(n: int, n_q: int, dim: int, clusters: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    x = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 8192):
        m = min(8192, n - s)
        v = centres[rng.integers(0, clusters, m)] + 0.8 * rng.standard_normal((m, dim), dtype=np.float32)
        x[s : s + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    q = x[rng.integers(0, n, n_q)] + 0.03 * rng.standard_normal((n_q, dim), dtype=np.float32)
    return x, q / np.linalg.norm(q, axis=1, keepdims=True)


def recall(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(found, exact)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--clusters", type=int, default=2000)
    ap.add_argument("--types", default="ivf,ivfpq,hnsw")
    args = ap.parse_args()

    import faiss
    import torch

    from geokit.retrieval import GeoIndex, IndexSpec, build_index, search

    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, torch "
        f"{torch.get_num_threads()} threads, faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads), "
        f"N={args.n} D={args.dim} queries={args.queries} clusters={args.clusters}, "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    x, q = make(args.n, args.queries, args.dim, args.clusters)
    t0 = time.perf_counter()
    _, exact = search(q, x, 10)
    t_exact = time.perf_counter() - t0
    rows = [
        {
            "index": "flat (exact, geokit.retrieval.search)",
            "params": "-",
            "build_s": 0.0,
            "size_mb": round(x.nbytes / 2**20, 1),
            "qps": round(len(q) / t_exact),
            "R@1": 1.0,
            "R@10": 1.0,
        }
    ]
    print(json.dumps(rows[-1]), flush=True)
    meta = {"paths": [str(i) for i in range(args.n)], "latlon": np.zeros((args.n, 2))}
    sweeps = {
        "ivf": [("nprobe", v) for v in (4, 16, 64)],
        "ivfpq": [("nprobe", v) for v in (4, 16, 64)],
        "hnsw": [("ef_search", v) for v in (16, 64, 256)],
    }
    for kind in args.types.split(","):
        spec = IndexSpec(kind)
        t0 = time.perf_counter()
        ix: GeoIndex = build_index(
            lambda pos: x[pos],
            args.n,
            args.dim,
            spec,
            paths=meta["paths"],
            latlon=meta["latlon"],
            chunk=8192,
            show=False,
        )
        build_s = time.perf_counter() - t0
        size = ix.size_bytes() / 2**20
        for name, value in sweeps[kind]:
            t0 = time.perf_counter()
            _, found = ix.search(q, 10, **{name: value})
            dt = time.perf_counter() - t0
            params = {k: v for k, v in ix.meta["params"].items() if k not in ("nprobe", "ef_search")}
            params[name] = value
            rows.append(
                {
                    "index": kind,
                    "params": params,
                    "build_s": round(build_s, 1),
                    "size_mb": round(size, 1),
                    "qps": round(len(q) / dt),
                    "R@1": round(recall(found, exact, 1), 4),
                    "R@10": round(recall(found, exact, 10), 4),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        del ix
    print(f"# load average at the end {os.getloadavg()[0]:.2f}")
    print("| index | parameters | build s | size MiB | queries/s | recall@1 | recall@10 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        p = r["params"] if isinstance(r["params"], str) else ", ".join(f"{k}={v}" for k, v in r["params"].items())
        print(
            f"| {r['index']} | {p} | {r['build_s']} | {r['size_mb']} | {r['qps']} | {r['R@1']:.3f} | {r['R@10']:.3f} |"
        )


if __name__ == "__main__":
    main()
