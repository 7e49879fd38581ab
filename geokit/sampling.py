"""What the engine gives samplers, and batch-building helpers they share.

A sampler builds the *global* batches of an epoch (see ``geokit_register_samplers``); under DDP
each rank trains on its slice of every global batch (:func:`rank_slice`), so neighbours the
sampler grouped together stay in one loss.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from heapq import heappop, heappush
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


class _Waiting:
    """Pairs that did not fit yet, in arrival order, grouped by what decides whether a pair fits
    a batch (its reference and its declared conflicts): the pairs of one group fit or fail
    together, so a scan visits groups, not every waiting pair (16,000 pairs sharing one
    reference cost one visit per batch, not 16,000)."""

    def __init__(self, key: Callable[[int], object]):
        self._key = key
        self.item: list[int] = []  # seq -> pair index (seq: arrival order)
        self.alive = bytearray()
        self.key_of: list[object] = []
        self.groups: dict[object, list[int]] = {}  # key -> its seqs, ascending (dead ones lazily)
        self._live: dict[object, int] = {}
        self._n = 0

    def append(self, i: int) -> None:
        key = self._key(int(i))
        seq = len(self.item)
        self.item.append(int(i))
        self.alive.append(1)
        self.key_of.append(key)
        self.groups.setdefault(key, []).append(seq)
        self._live[key] = self._live.get(key, 0) + 1
        self._n += 1

    def extend(self, items: Iterable[int]) -> None:
        for i in items:
            self.append(i)

    def __len__(self) -> int:
        return self._n

    def __bool__(self) -> bool:
        return self._n > 0

    def __iter__(self):
        return (self.item[s] for s in range(len(self.item)) if self.alive[s])

    def remove(self, seq: int) -> None:
        self.alive[seq] = 0
        self._n -= 1
        key = self.key_of[seq]
        live = self._live[key] - 1
        if live == 0:
            del self.groups[key], self._live[key]
            return
        self._live[key] = live
        lst = self.groups[key]
        if len(lst) > 2 * live + 8:  # compact: dead entries must not be skipped over and over
            self.groups[key] = [x for x in lst if self.alive[x]]

    def next_after(self, key: object, seq: int) -> int | None:
        """The group's first waiting seq after ``seq``."""
        lst = self.groups.get(key)
        if lst is None:
            return None
        j = bisect_right(lst, seq)
        while j < len(lst) and not self.alive[lst[j]]:
            j += 1
        return lst[j] if j < len(lst) else None


class BatchPacker:
    """Fills batches so that no reference (or declared conflict) appears twice in one batch.

    Items that do not fit the open batch wait in a queue and are offered to the next batches
    first, so every item gets placed unless it collides everywhere. ``add`` is O(1 + conflicts);
    the waiting queue is scanned by groups of pairs that fit or fail together (same reference
    and conflicts), so packing is O(N log N) however many pairs share a reference. The batches
    are exactly those of the simple queue it replaces (a scan of every waiting pair).
    """

    def __init__(self, train: TrainSet, batch_size: int):
        self.ref = train.pair_reference
        self.conflicts = train.pair_conflicts
        self.batch_size = batch_size
        self.batches: list[np.ndarray] = []
        self._cur: list[int] = []
        self._refs: set[int] = set()
        self._blocked: set[int] = set()
        self.waiting = _Waiting(self._group_key)

    def _group_key(self, i: int) -> object:
        if self.conflicts is None:
            return int(self.ref[i])
        return (int(self.ref[i]), *(int(c) for c in self.conflicts[i] if c >= 0))

    def fits(self, i: int) -> bool:
        r = int(self.ref[i])
        if r in self._refs or r in self._blocked:
            return False
        if self.conflicts is not None:
            return not any(int(c) in self._refs for c in self.conflicts[i] if c >= 0)
        return True

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
            self._scan(wrap=False)  # one pass: each queued item offered once, in queue order

    def _reset(self) -> None:
        self._cur, self._refs, self._blocked = [], set(), set()

    def finish(self, last_batch: LastBatch = "drop") -> list[np.ndarray]:
        """Place what is still waiting, then drop or keep the last partial batch."""
        if self.waiting:
            self._scan(wrap=True, last_batch=last_batch)
        if self._cur:
            self._close_partial(last_batch)
        return self.batches

    def _scan(self, *, wrap: bool, last_batch: LastBatch = "drop") -> None:
        """Offer the waiting pairs in queue order to the open batch, as a queue that re-appends
        what does not fit would. ``wrap=False``: one pass. ``wrap=True``: round and round; when
        nothing fits, the partial batch is closed and the round goes on after the last pair
        placed, until the queue is empty."""
        w = self.waiting
        heap: list[tuple[int, int, object]] = []  # (lap, seq, group): each group's next candidate

        def push_next(key: object, lap: int, seq: int) -> None:
            nxt = w.next_after(key, seq)
            if nxt is not None:
                heappush(heap, (lap, nxt, key))
            elif wrap:
                nxt = w.next_after(key, -1)
                if nxt is not None:
                    heappush(heap, (lap + 1, nxt, key))

        for key in list(w.groups):
            push_next(key, 0, -1)
        discarded: list[object] = []  # groups that cannot join the open batch until it closes
        last = (0, -1)
        while heap:
            lap, seq, key = heappop(heap)
            if not self.add(w.item[seq]):
                discarded.append(key)
            else:
                w.remove(seq)
                last = (lap, seq)
                if self._cur:  # still open: this group's reference is in it now
                    discarded.append(key)
                else:  # a fresh batch: every group may fit again, from the next pair on
                    discarded.append(key)
                    for k in discarded:
                        push_next(k, lap, seq)
                    discarded = []
            if not heap and wrap and discarded and w:
                if not self._cur:  # cannot happen: an empty batch takes any pair
                    break
                self._close_partial(last_batch)
                for k in discarded:
                    push_next(k, *last)
                discarded = []

    def _close_partial(self, last_batch: LastBatch) -> None:
        if last_batch == "keep" and len(self._cur) >= 2:
            self.batches.append(np.asarray(self._cur, dtype=np.int64))
        self._reset()


def pack_batches(
    order: Iterable[int], train: TrainSet, batch_size: int, last_batch: LastBatch = "drop"
) -> list[np.ndarray]:
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
            raise GeokitError(
                f"{self._label} is broken: batches() returned {type(out).__name__}, not a list of index arrays"
            ) from None
        checked = [self.check(b, n, f"batch {k} of epoch {ctx.epoch}") for k, b in enumerate(out)]
        placed = len(np.unique(np.concatenate(checked))) if checked else 0
        full = (n // ctx.batch_size) * ctx.batch_size  # what full batches can hold (a partial last one may drop)
        if placed < 0.9 * full and ctx.rank == 0:  # suspicious data, said once per epoch, never silent
            import logging

            logging.getLogger("geokit").warning(
                "epoch %d: %s placed %d of the %d training pairs in its %d batches (%d left out): with "
                "%d references for %d pairs, many pairs share a reference and a batch holds each "
                "reference once. Lower train.batch_size or check the dataset.",
                ctx.epoch,
                self._label,
                placed,
                n,
                len(checked),
                n - placed,
                len(ctx.train.reference_paths),
                n,
            )
        return checked

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
    return batch[bounds[rank] : bounds[rank + 1]]
