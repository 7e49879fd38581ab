"""What the engine gives samplers, and batch-building helpers they share.

A sampler builds the *global* batches of an epoch (see ``geokit_register_samplers``); under DDP
each rank trains on its slice of every global batch (:func:`rank_slice`), so neighbours the
sampler grouped together stay in one loss.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from geokit.data import TrainSet
from geokit.errors import GeokitError

LastBatch = Literal["drop", "keep"]


@dataclass
class TrainEmbeddings:
    """L2-normalised float32 embeddings of the training set, in evaluation mode.

    :ivar query: ``(N, D)``, row *i* is training pair *i*'s query.
    :ivar reference: ``(R, D)``, row *j* is ``TrainSet.reference_paths[j]``.
    """

    query: np.ndarray
    reference: np.ndarray


@dataclass
class EpochContext:
    """Everything a sampler may use to build one epoch. Third-party samplers get the same."""

    epoch: int  # 1-based
    epochs: int
    batch_size: int  # pairs per global batch
    seed: int
    train: TrainSet
    dataset_name: str = "dataset"
    rank: int = 0
    world_size: int = 1
    embed: Callable[[], TrainEmbeddings] = field(default=lambda: _no_embed())

    def rng(self, *extra: int) -> np.random.Generator:
        """A generator that depends only on (seed, epoch, extra): same batches on every rank."""
        return np.random.default_rng([self.seed, self.epoch, *extra])


@dataclass
class StepContext(EpochContext):
    """What a step-level sampler's ``next_batch`` receives before each step.

    :ivar step: optimisation steps done so far in the run (0-based index of the coming step).
    :ivar batch: batches handed out so far in this epoch (0-based index of the coming batch).
    :ivar embed_pairs: ``embed_pairs(indices) -> TrainEmbeddings`` with ``query[k]`` the query
        of pair ``indices[k]`` and ``reference[k]`` its reference, embedded now, in evaluation
        mode (every rank embeds its share; all ranks get every row).
    """

    step: int = 0
    batch: int = 0
    embed_pairs: Callable[[np.ndarray], TrainEmbeddings] = field(default=lambda _i: _no_embed())


def is_step_level(sampler: object) -> bool:
    """Whether ``sampler`` hands out batches step by step (``next_batch``) rather than per epoch."""
    return callable(getattr(sampler, "next_batch", None))


def _no_embed() -> TrainEmbeddings:
    raise RuntimeError("this EpochContext has no embed function (the engine provides one)")


class BatchPacker:
    """Fills batches so that no reference (or declared conflict) appears twice in one batch.

    Items that do not fit the open batch wait in a queue and are offered to the next batches
    first, so every item gets placed unless it collides everywhere. ``add`` is O(1 + conflicts).
    """

    def __init__(self, train: TrainSet, batch_size: int):
        self.ref = train.pair_reference
        self.conflicts = train.pair_conflicts
        self.batch_size = batch_size
        self.batches: list[np.ndarray] = []
        self._cur: list[int] = []
        self._refs: set[int] = set()
        self._blocked: set[int] = set()
        self.waiting: deque[int] = deque()

    def fits(self, i: int) -> bool:
        r = int(self.ref[i])
        if r in self._refs or r in self._blocked:
            return False
        if self.conflicts is not None:
            return not any(int(c) in self._refs for c in self.conflicts[i] if c >= 0)
        return True

    @property
    def open_size(self) -> int:
        return len(self._cur)

    def contains_reference(self, r: int) -> bool:
        return r in self._refs

    def add(self, i: int) -> bool:
        """Put pair ``i`` in the open batch if it fits; closes the batch when full."""
        if not self.fits(i):
            return False
        self._cur.append(int(i))
        self._refs.add(int(self.ref[i]))
        if self.conflicts is not None:
            self._blocked.update(int(c) for c in self.conflicts[i] if c >= 0)
        if len(self._cur) == self.batch_size:
            self.batches.append(np.asarray(self._cur, dtype=np.int64))
            self._reset()
        return True

    def add_or_wait(self, i: int) -> None:
        """Add ``i``, or queue it for a later batch; a fresh batch first takes queued items."""
        if not self.add(i):
            self.waiting.append(int(i))
        elif not self._cur and self.waiting:
            for _ in range(len(self.waiting)):  # one pass: each queued item offered once
                j = self.waiting.popleft()
                if not self.add(j):
                    self.waiting.append(j)

    def _reset(self) -> None:
        self._cur, self._refs, self._blocked = [], set(), set()

    def finish(self, last_batch: LastBatch = "drop") -> list[np.ndarray]:
        """Place what is still waiting, then drop or keep the last partial batch."""
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

    def _close_partial(self, last_batch: LastBatch) -> None:
        if last_batch == "keep" and len(self._cur) >= 2:
            self.batches.append(np.asarray(self._cur, dtype=np.int64))
        self._reset()


def pack_batches(order: Iterable[int], train: TrainSet, batch_size: int,
                 last_batch: LastBatch = "drop") -> list[np.ndarray]:
    """Cut ``order`` into batches of ``batch_size`` with unique references per batch."""
    packer = BatchPacker(train, batch_size)
    for i in order:
        packer.add_or_wait(int(i))
    return packer.finish(last_batch)


class CheckedSampler:
    """A sampler whose batches are checked before training uses them: a plugin's bug (an index
    out of range, a float or 2-D array, a pair twice in one batch) becomes an error naming the
    plugin instead of a crash deep inside the data loader or a silently wrong loss."""

    def __init__(self, sampler: object, label: str):
        self._sampler, self._label = sampler, label

    def __getattr__(self, name: str):  # state_dict, load_state_dict, options...
        return getattr(self._sampler, name)

    def batches(self, ctx: EpochContext) -> list[np.ndarray]:
        out = self._sampler.batches(ctx)  # type: ignore[attr-defined]
        n = len(ctx.train)
        try:
            out = list(out)
        except TypeError:
            raise GeokitError(f"{self._label} is broken: batches() returned {type(out).__name__}, "
                              "not a list of index arrays") from None
        return [self.check(b, n, f"batch {k} of epoch {ctx.epoch}") for k, b in enumerate(out)]

    def check(self, batch: object, n: int, where: str, limit: int | None = None) -> np.ndarray:
        """``batch`` as int64 pair indices, or an error naming the plugin and what is wrong."""
        arr = np.asarray(batch)
        why = ""
        if arr.ndim != 1 or arr.size == 0:
            why = f"has shape {arr.shape}, expected a non-empty 1-D array"
        elif not np.issubdtype(arr.dtype, np.integer):
            why = f"holds {arr.dtype} values, expected integer pair indices"
        elif arr.min() < 0 or arr.max() >= n:
            bad = int(arr.min()) if arr.min() < 0 else int(arr.max())
            why = f"holds index {bad}, outside the {n:,} training pairs [0, {n - 1}]"
        elif len(np.unique(arr)) != len(arr):
            why = "holds the same pair twice"
        elif limit is not None and len(arr) > limit:
            why = f"holds {len(arr)} pairs, more than train.batch_size={limit}"
        if why:
            raise GeokitError(f"{self._label} is broken: {where} {why}")
        return arr.astype(np.int64, copy=False)


def rank_slice(batch: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This rank's contiguous share of a global batch (sizes differ by at most one)."""
    bounds = np.linspace(0, len(batch), world_size + 1).round().astype(int)
    return batch[bounds[rank]:bounds[rank + 1]]
