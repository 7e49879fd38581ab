"""The learning-rate schedule, the per-step seed, and how many steps an epoch has."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from geokit.config import TrainConfig
from geokit.data import TrainSet
from geokit.errors import GeokitError
from geokit.runtime import log


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up from 0, then a half cosine to 0 at ``total`` steps."""
    if step < warmup:
        return base * (step + 1) / warmup
    span = max(total - warmup, 1)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))


def step_seed(seed: int, step: int) -> int:
    """torch's RNG is re-seeded from (seed, step) before every step, so stochastic layers
    (drop-path) give the same result whether or not the run was interrupted."""
    return int(np.random.SeedSequence([seed % 2**32, step]).generate_state(1)[0])


def max_full_batches(pair_reference: np.ndarray, batch_size: int) -> int:
    """The most full batches an epoch can have when no reference may appear twice in a batch:
    the largest B with sum_r min(count_r, B) >= B * batch_size (a pair set with few references
    cannot fill many batches, whatever the sampler)."""
    counts = np.sort(np.bincount(np.asarray(pair_reference, dtype=np.int64)))
    counts = counts[counts > 0]
    lo, hi = 0, int(counts.sum()) // batch_size
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if int(np.minimum(counts, mid).sum()) >= mid * batch_size:
            lo = mid
        else:
            hi = mid - 1
    return lo


@dataclass(frozen=True)
class Schedule:
    """The run's step plan: steps per epoch, total and warm-up steps, and the lr at each step."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    base_lr: float

    @classmethod
    def plan(cls, tc: TrainConfig, train_set: TrainSet, dataset_name: str) -> Schedule:
        """One step per full batch; fewer when the pairs share too few references to fill them."""
        steps_per_epoch = max(len(train_set) // tc.batch_size, 1)
        fillable = max_full_batches(train_set.pair_reference, tc.batch_size)
        if fillable < steps_per_epoch:
            # Suspicious data: many pairs share few references, and one batch may hold a
            # reference only once. Say so, and plan the schedule for the steps that can run.
            log.warning(
                "only %d batches of %d pairs with distinct references can be formed from %d training "
                "pairs with %d references (at most %d pairs per epoch; the rest are left out of every "
                "epoch): many pairs share a reference. The lr schedule and warm-up are planned for "
                "%d steps per epoch. Lower train.batch_size or check the dataset.",
                fillable,
                tc.batch_size,
                len(train_set),
                len(train_set.reference_paths),
                fillable * tc.batch_size,
                max(fillable, 1),
            )
            if fillable == 0:
                raise GeokitError(
                    f"dataset '{dataset_name}': no batch of train.batch_size={tc.batch_size} pairs with "
                    f"distinct references can be formed ({len(train_set.reference_paths)} references "
                    f"for {len(train_set)} pairs); lower train.batch_size"
                )
            steps_per_epoch = fillable
        return cls(
            steps_per_epoch,
            tc.epochs * steps_per_epoch,
            int(round(tc.warmup_epochs * steps_per_epoch)),
            tc.lr,
        )

    def lr(self, step: int) -> float:
        """The learning rate of step ``step`` (0-based)."""
        return lr_at(step, self.total_steps, self.warmup_steps, self.base_lr)
