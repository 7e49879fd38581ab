"""The tiny data and the run helpers of :mod:`geokit.testing` (re-exported there; import them
from ``geokit.testing``): generated datasets and configs, a reference batch packer, and the
``torchrun`` command the distributed tests and checks run."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geokit.data import TrainSet
from geokit.sampling import BatchPacker, LastBatch

# ------------------------------------------------------------------------------ tiny data


def make_pairs_dataset(
    root: str | Path,
    *,
    n_train: int = 48,
    n_test: int = 24,
    size: int = 32,
    gps: bool = True,
    seed: int = 0,
    val: bool = False,
) -> Path:
    """Write a small learnable ``pairs`` dataset: each location is a random colour field; its
    reference is a north-up tile and its query a panorama strip derived from the same field."""
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    splits = {"train": n_train, "test": n_test, **({"val": n_test} if val else {})}
    for split, n in splits.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(n):
            base = rng.random((4, 4, 3))
            tile = np.kron(base, np.ones((size // 4, size // 4, 1)))
            tile = (255 * np.clip(tile + rng.normal(0, 0.03, tile.shape), 0, 1)).astype(np.uint8)
            pano = np.concatenate([np.rot90(tile, -k)[: size // 4] for k in range(4)], axis=1)
            pano = np.ascontiguousarray(np.repeat(pano, 2, axis=0))
            q, r = f"{split}/q{i:04d}.png", f"{split}/r{i:04d}.png"
            Image.fromarray(pano).save(root / q)
            Image.fromarray(tile).save(root / r)
            lat, lon = 48.0 + 0.001 * i, 11.0 + 0.0005 * (i % 7)
            rows.append([q, r] + ([f"{lat:.6f}", f"{lon:.6f}"] if gps else []))
        with open(root / f"{split}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["query", "reference"] + (["lat", "lon"] if gps else []))
            w.writerows(rows)
    return root


def tiny_config(root: str | Path, **sections: Any) -> dict[str, Any]:
    """A config dict that trains in seconds on :func:`make_pairs_dataset` data."""
    cfg: dict[str, Any] = {
        "seed": 0,
        "encoder": {"name": "convnext", "model": "convnext_atto", "pretrained": False},
        "loss": {"name": "infonce"},
        "sampler": {"name": "random"},
        "dataset": {"name": "pairs", "root": str(root), "query_size": [32, 128], "reference_size": [32, 32]},
        "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "workers": 0, "warmup_epochs": 0.5},
        "eval": {"batch_size": 16},
    }
    for key, value in sections.items():
        if isinstance(value, Mapping) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def synthetic_train_set(
    n: int = 64, *, n_refs: int | None = None, gps: bool = True, conflicts: bool = False, seed: int = 0
) -> TrainSet:
    """Metadata-only training set (no images) for sampler checks."""
    rng = np.random.default_rng(seed)
    n_refs = n_refs or n
    pair_ref = np.concatenate([np.arange(n_refs), rng.integers(0, n_refs, n - n_refs)]) if n > n_refs else np.arange(n)
    conf = None
    if conflicts:
        conf = np.full((n, 2), -1, dtype=np.int64)
        conf[:, 0] = (pair_ref + 1) % n_refs
    return TrainSet(
        [f"q{i}" for i in range(n)],
        [f"r{j}" for j in range(n_refs)],
        pair_ref,
        reference_gps=np.c_[48 + rng.random(n_refs) * 0.1, 11 + rng.random(n_refs) * 0.1] if gps else None,
        pair_conflicts=conf,
    )


# ------------------------------------------------------------------------------ reference packer


class QueuePacker(BatchPacker):
    """The simple batch packer that :class:`geokit.sampling.BatchPacker` replaced, kept as the
    reference its batches must equal: a queue of waiting pairs, every one re-offered to every
    fresh batch (quadratic in pairs that share a reference). It shares the open batch
    (``fits``/``add``, unchanged since) and replaces what the fast packer rewrote: the waiting
    queue and how it is scanned (``add_or_wait``, ``finish``)."""

    def __init__(self, train: TrainSet, batch_size: int) -> None:
        super().__init__(train, batch_size)
        self.waiting: deque[int] = deque()  # type: ignore[assignment]  # a plain queue, not groups

    def add_or_wait(self, i: int) -> None:
        """Add ``i``, or queue it; a fresh batch is first offered every queued pair, once."""
        if not self.add(i):
            self.waiting.append(int(i))
        elif not self._cur and self.waiting:
            for _ in range(len(self.waiting)):
                j = self.waiting.popleft()
                if not self.add(j):
                    self.waiting.append(j)

    def finish(self, last_batch: LastBatch = "drop") -> list[np.ndarray]:
        """Place the waiting pairs round and round (closing the partial batch when none fits),
        then drop or keep the last partial batch."""
        stuck = 0
        while self.waiting and stuck < len(self.waiting):
            i = self.waiting.popleft()
            if self.add(i):
                stuck = 0
            else:
                self.waiting.append(i)
                stuck += 1
                if stuck == len(self.waiting) and self._cur:
                    self._close_partial(last_batch)
                    stuck = 0
        if self._cur:
            self._close_partial(last_batch)
        return self.batches


# ------------------------------------------------------------------------------ torchrun

# Offline, no progress bars, one thread per rank: what every test run of geokit wants.
QUIET_ENV = {"HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "GEOKIT_PROGRESS": "0", "OMP_NUM_THREADS": "1"}


def torchrun_command(
    args: Sequence[str], *, nproc: int = 2, env: Mapping[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """``(command, environment)`` running ``geokit ARGS`` on ``nproc`` local ranks with
    ``torchrun --standalone`` (this interpreter's ``torch.distributed.run``); the environment is
    this process's plus :data:`QUIET_ENV`, plus ``env``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    return [*cmd, "-m", "geokit", *args], {**os.environ, **QUIET_ENV, **(env or {})}


def run_torchrun(
    args: Sequence[str],
    *,
    nproc: int = 2,
    timeout: float = 300,
    env: Mapping[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run :func:`torchrun_command` to completion, output captured as text; with ``check``, a
    non-zero exit raises ``AssertionError`` carrying the ends of its stdout and stderr."""
    cmd, full_env = torchrun_command(args, nproc=nproc, env=env)
    proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc
