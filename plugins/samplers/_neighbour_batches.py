"""Epoch-level neighbour batch builder shared by the ``gps`` and ``dss`` samplers (Sample4Geo §4b).

A sampler hands in a *neighbour table*: for each row (a reference for GPS, a training pair for
DSS) the reference indices that are hardest to tell apart from it, nearest first, ``-1`` padded.
:func:`build_neighbour_batches` turns it into the ordered global batches of one epoch:

1. Anchors (training pairs) come in a seeded random order.
2. An anchor that fits the open batch is added; it then brings up to ``select`` neighbours:
   the candidates are the first ``select // 2`` of its neighbour list always, and
   ``select - select // 2`` drawn at random from the rest of the first ``range`` entries, walked
   in that order. ``walk`` decides what happens to references whose pairs are all used this
   epoch (or that cannot join the open batch):

   - ``skip`` (default, the released code): candidates are drawn from the list as it is and
     such references are skipped while walking, so late in an epoch an anchor brings fewer
     neighbours and batches hold more anchors (CVUSA-size GPS lists: 6.1 anchors per batch,
     measured in BENCHMARKS.md, "Sampler fidelity");
   - ``prefilter`` (geokit before 2026-12): references with no unused pair are removed *before*
     choosing, so anchors late in an epoch still bring ``select`` neighbours from the first
     ``range`` (3.2 anchors per batch: fewer, larger neighbourhoods; harder batches).

   A neighbour is a reference; the pair that joins is one of that reference's still-unused
   pairs (random among them, so VIGOR satellites with two panoramas alternate).
3. Every pair joins at most once per epoch; a batch never holds two pairs with the same reference
   or a declared conflict (``TrainSet.pair_conflicts``), which :class:`geokit.sampling.BatchPacker`
   enforces. An anchor that does not fit waits and is offered first to the next batches (still as
   an anchor, with its neighbours).
4. ``hard_fraction`` caps the share of each batch's slots taken by neighbour groups (an anchor and
   the neighbours it brought); the remaining slots get anchors alone, i.e. random pairs.
   ``1.0`` is the original (groups fill the batch), ``0.0`` gives random batches.
5. The last partial batch is dropped (the original) or kept (``last_batch: keep``).

Defaults scale with the batch: ``select = batch_size // 2`` and ``range = batch_size`` (64 and 128
for the paper's batch of 128, the values of the released train scripts).

Cost: O(N log N) for the two permutations and the reference pools, then O(N + N_anchor·select)
with small constants (numpy for the per-anchor candidate choice, no list.pop(0)).
"""

from __future__ import annotations

from collections import deque
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from geokit.data import TrainSet
from geokit.errors import GeokitError
from geokit.sampling import BatchPacker, EpochContext

Walk = Literal["skip", "prefilter"]


class NeighbourOptions(BaseModel):
    """Options shared by the neighbour samplers (``gps``, ``dss``)."""

    model_config = ConfigDict(extra="forbid")

    select: int | None = Field(None, ge=0, description="neighbours each anchor brings (default: batch_size // 2)")
    range: int | None = Field(
        None, ge=1, description="depth of the neighbour list the random half is drawn from (default: batch_size)"
    )
    hard_fraction: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="share of each batch filled by neighbour groups; the rest are random "
        "pairs (1.0 = Sample4Geo, 0.0 = random batches)",
    )
    last_batch: Literal["drop", "keep"] = Field("drop", description="what to do with a partial last batch")
    walk: Walk = Field(
        "skip",
        description="skip: used neighbours are skipped while walking the drawn candidates "
        "(the released code); prefilter: they are removed before drawing, "
        "so late anchors still bring `select` neighbours (harder batches)",
    )


def resolve_depth(select: int | None, range_: int | None, batch_size: int) -> tuple[int, int]:
    """``(select, range)`` with the batch-scaled defaults; ``range`` is at least ``select``."""
    s = batch_size // 2 if select is None else int(select)
    r = batch_size if range_ is None else int(range_)
    return s, max(r, s, 1)


def epoch_batches(
    ctx: EpochContext,
    table: np.ndarray,
    options: NeighbourOptions,
    *,
    select: int,
    range_: int,
    key_of_pair: np.ndarray | None = None,
) -> list[np.ndarray]:
    """:func:`build_neighbour_batches` for one epoch of a neighbour sampler: its training set,
    batch size and generator from ``ctx``, the batch options shared by ``gps`` and ``dss`` from
    ``options`` (``select``/``range_`` already resolved by :func:`resolve_depth`)."""
    return build_neighbour_batches(
        ctx.train,
        ctx.batch_size,
        table,
        ctx.rng(),
        key_of_pair=key_of_pair,
        select=select,
        range_=range_,
        hard_fraction=options.hard_fraction,
        last_batch=options.last_batch,
        walk=options.walk,
    )


def build_neighbour_batches(
    train: TrainSet,
    batch_size: int,
    table: np.ndarray,
    rng: np.random.Generator,
    *,
    key_of_pair: np.ndarray | None = None,
    select: int,
    range_: int,
    hard_fraction: float = 1.0,
    last_batch: Literal["drop", "keep"] = "drop",
    walk: Walk = "skip",
    stats: dict | None = None,
) -> list[np.ndarray]:
    """The ordered global batches of one epoch (arrays of training-pair indices).

    :param table: ``(M, K)`` reference indices, nearest first, ``-1`` padded at the end of a row.
    :param key_of_pair: ``(N,)`` row of ``table`` for each training pair; ``None`` means row *i*
        belongs to pair *i* (``M == N``). GPS passes ``train.pair_reference``.
    :param rng: the epoch's generator (``ctx.rng(...)``); the batches are a function of it.
    :param walk: ``skip`` (the released code) or ``prefilter`` (see the module docstring).
    :param stats: if given, filled with ``anchor``: ``(N,)`` bool, the pairs that joined as
        anchors (the rest joined as some anchor's neighbour), for measurements.
    """
    if walk not in ("skip", "prefilter"):
        raise ValueError(f"unknown walk {walk!r}")
    n = len(train)
    if batch_size < 2:
        raise GeokitError(f"train.batch_size={batch_size}: neighbour batches need at least 2 pairs")
    table = np.asarray(table)
    if table.ndim != 2:
        raise ValueError(f"neighbour table must be 2-D, got shape {table.shape}")
    keys = np.arange(n) if key_of_pair is None else np.asarray(key_of_pair, dtype=np.int64)
    if len(keys) != n or (n and (keys.min() < 0 or keys.max() >= len(table))):
        raise ValueError("key_of_pair must give one valid table row per training pair")
    depth = min(range_, table.shape[1])
    table = table[:, :depth]
    near = min(select // 2, depth)
    n_random = max(min(select, depth) - near, 0)
    hard_quota = int(round(hard_fraction * batch_size))

    ref = train.pair_reference
    n_refs = len(train.reference_paths)
    # Per reference, its pairs in random order: a pool walked by a pointer that skips used pairs.
    perm = rng.permutation(n)
    pool = perm[np.argsort(ref[perm], kind="stable")].tolist()
    counts = np.bincount(ref, minlength=n_refs)
    ends = np.cumsum(counts)
    ptr = (ends - counts).tolist()
    ends_l = ends.tolist()
    remaining = counts.astype(np.int64)  # numpy: the candidate prefilter is vectorised
    used = bytearray(n)
    anchor = np.zeros(n, dtype=bool) if stats is not None else None

    packer = BatchPacker(train, batch_size)
    order = rng.permutation(n).tolist()
    keys_l = keys.tolist()
    ref_l = ref.tolist()

    def mark(i: int) -> None:
        used[i] = 1
        remaining[ref_l[i]] -= 1

    def take(r: int) -> int:
        """An unused pair of reference ``r`` (the pool pointer skips used ones), or -1."""
        p, e = ptr[r], ends_l[r]
        while p < e and used[pool[p]]:
            p += 1
        ptr[r] = p
        return pool[p] if p < e else -1

    hard_in_batch = 0
    retry: deque[int] = deque()
    offers = 0  # retry items still to offer to the open batch
    pos = 0
    while True:
        if offers > 0:
            i = retry.popleft()
            offers -= 1
        elif pos < n:
            i = order[pos]
            pos += 1
        else:
            break
        if used[i]:
            continue
        closed = len(packer.batches)
        if not packer.add(i):
            retry.append(i)
            continue
        mark(i)
        if anchor is not None:
            anchor[i] = True
        if len(packer.batches) == closed and select > 0 and hard_in_batch + 1 < hard_quota:
            row = table[keys_l[i]]
            row = row[row >= 0]
            if walk == "prefilter":
                row = row[remaining[row] > 0]  # references with no unused pair left cannot join
            if len(row):
                head, tail = row[:near], row[near:]
                if len(tail) > n_random:
                    tail = tail[rng.permutation(len(tail))[:n_random]]
                brought = 0
                for c in (np.concatenate((head, tail)) if len(tail) else head).tolist():
                    if hard_in_batch + 1 + brought >= hard_quota:
                        break
                    j = take(c)
                    if j >= 0 and packer.add(j):
                        mark(j)
                        brought += 1
                        if len(packer.batches) != closed:
                            break
                if brought and len(packer.batches) == closed:
                    hard_in_batch += 1 + brought
        if len(packer.batches) != closed:  # a batch closed: a fresh one takes waiting anchors first
            hard_in_batch = 0
            offers = len(retry)
    packer.waiting.extend(i for i in retry if not used[i])
    if anchor is not None and stats is not None:  # anchor is made only with stats
        anchor[list(packer.waiting)] = True  # finish() places these alone, without neighbours
        stats["anchor"] = anchor
    return packer.finish(last_batch)
