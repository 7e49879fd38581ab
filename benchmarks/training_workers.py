"""DataLoader workers for training on the CPU: a whole engine epoch (PNG decoding, the
Sample4Geo pair augmentation, normalisation, training steps) with 0, 1 and 2 worker processes.

Interleaved rounds, median images/s of each run's second epoch (persistent workers already
started; checkpoint writing excluded).

    flock /tmp/geokit-cpu.lock .venv/bin/python benchmarks/training_workers.py [--size 64]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("GEOKIT_PROGRESS", "0")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=160)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import torch

    from geokit.config import resolve
    from geokit.engine import train
    from geokit.runtime import log
    from geokit.testing import make_pairs_dataset, tiny_config

    tmp = Path(tempfile.mkdtemp(prefix="geokit-workers-"))
    s = args.size
    root = make_pairs_dataset(tmp / "data", n_train=args.pairs, n_test=8, size=s)
    results: dict[int, list[float]] = {int(w): [] for w in args.workers.split(",")}
    for _ in range(args.rounds):
        for w in results:
            cfg = resolve(
                tiny_config(
                    root,
                    dataset={"query_size": [s, 4 * s], "reference_size": [s, s]},
                    train={"epochs": 2, "batch_size": args.batch, "workers": w},
                )
            )
            res = train(cfg, tmp / f"run{time.monotonic_ns()}", show=False)
            log.setLevel(logging.WARNING)
            results[w].append(res.history[-1]["images_per_s"])
    print(
        f"convnext_atto, query {s}x{4 * s} + reference {s}x{s}, {args.batch} pairs/step, "
        f"{args.pairs} pairs/epoch, augmentation on, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    for w, ips in results.items():
        print(json.dumps({"workers": w, "images_per_s_median": statistics.median(ips), "all": ips}))


if __name__ == "__main__":
    main()
