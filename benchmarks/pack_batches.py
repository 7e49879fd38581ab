"""Batch packing (geokit.sampling.pack_batches) against the simple queue it replaced.

The old packer re-offered every waiting pair to every fresh batch: quadratic in pairs that share
one reference. The new one scans waiting pairs by group and gives the same batches. Timed
interleaved (old, new, old, new, ...) in one process; medians.

    python benchmarks/pack_batches.py
"""

from __future__ import annotations

import time

import numpy as np

from geokit.data import TrainSet
from geokit.sampling import BatchPacker
from geokit.testing import QueuePacker  # the replaced algorithm, kept as the reference


def run(cls, train, bs, order):
    p = cls(train, bs)
    for i in order:
        p.add_or_wait(int(i))
    return p.finish("drop")


def main(rounds: int = 3) -> None:
    n = 50_000
    rng = np.random.default_rng(0)
    cases = [
        ("unique references", np.arange(n)),
        ("2 pairs per reference", np.arange(n) // 2),
        ("1-5 pairs per reference", np.repeat(np.arange(n), rng.integers(1, 6, n))[:n]),
        ("4,000 pairs on one reference + 99 others", np.r_[np.zeros(4000, np.int64), np.arange(1, 100)]),
    ]
    for name, ref in cases:
        train = TrainSet([""] * len(ref), [""] * (int(ref.max()) + 1), ref)
        order = np.random.default_rng(1).permutation(len(ref))
        old, new = [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            a = run(QueuePacker, train, 128 if len(ref) > 10_000 else 32, order)
            t1 = time.perf_counter()
            b = run(BatchPacker, train, 128 if len(ref) > 10_000 else 32, order)
            t2 = time.perf_counter()
            assert [x.tolist() for x in a] == [x.tolist() for x in b], "batches differ"
            old.append(t1 - t0)
            new.append(t2 - t1)
        print(
            f"{name:45s} N={len(ref):>6,}  queue {np.median(old):8.3f} s  new {np.median(new):6.3f} s  "
            f"ratio {np.median(old) / np.median(new):6.1f}x  (same batches)"
        )
    ref = np.r_[np.zeros(16_000, np.int64), np.arange(1, 100)]
    train = TrainSet([""] * len(ref), [""] * 100, ref)
    t0 = time.perf_counter()
    run(BatchPacker, train, 32, np.random.default_rng(1).permutation(len(ref)))
    print(f"{'16,000 pairs on one reference (new only)':45s} N={len(ref):>6,}  new {time.perf_counter() - t0:6.3f} s")


if __name__ == "__main__":
    main()
