"""Chunk size of the retrieval scan: interleaved rounds (so background load hits every setting
alike), best of N, in one process. Reports seconds for retrieval_metrics and for the bare block
matmuls at each chunk, and the 4096×1024×8192 matmul rate.

    flock /tmp/geokit-cpu.lock .venv/bin/python benchmarks/retrieval_chunks.py
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=4096)
    ap.add_argument("--references", type=int, default=40000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--chunks", default="64,128,256,512,1024,2048")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    import torch

    from geokit.metrics import retrieval_metrics
    from geokit.retrieval import default_chunk

    rng = np.random.default_rng(0)
    r = rng.standard_normal((args.references, args.dim), dtype=np.float32)
    r /= np.linalg.norm(r, axis=1, keepdims=True)
    pos = rng.integers(0, args.references, args.queries)
    q = r[pos] + 0.23 * rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    chunks = [int(c) for c in args.chunks.split(",")] + [default_chunk(args.references)]
    rt = torch.from_numpy(r).t()
    qt = torch.from_numpy(q)
    a, b, o = torch.randn(4096, 1024), torch.randn(1024, 8192), torch.empty(4096, 8192)
    best: dict[str, float] = {}
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} load {os.getloadavg()[0]:.2f} "
        f"{args.queries}x{args.references}x{args.dim}, default chunk {chunks[-1]}",
        flush=True,
    )
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        torch.mm(a, b, out=o)
        best["mm_rate"] = max(best.get("mm_rate", 0), 2 * 4096 * 1024 * 8192 / (time.perf_counter() - t0))
        for c in chunks:
            t0 = time.perf_counter()
            retrieval_metrics(q, r, pos, chunk_size=c)
            key = f"metrics_{c}"
            best[key] = min(best.get(key, 1e9), time.perf_counter() - t0)
            buf = torch.empty(c, args.references)
            t0 = time.perf_counter()
            for s in range(0, args.queries, c):
                torch.mm(qt[s : s + c], rt, out=buf[: len(qt[s : s + c])])
            key = f"mm_only_{c}"
            best[key] = min(best.get(key, 1e9), time.perf_counter() - t0)
    limit = 2 * args.queries * args.references * args.dim / best["mm_rate"]
    out = {"matmul_gflops": round(best["mm_rate"] / 1e9, 1), "limit_s": round(limit, 3)}
    for c in chunks:
        out[f"chunk_{c}"] = {
            "metrics_s": round(best[f"metrics_{c}"], 3),
            "mm_only_s": round(best[f"mm_only_{c}"], 3),
            "metrics_over_limit": round(best[f"metrics_{c}"] / limit, 2),
        }
    out["load_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
