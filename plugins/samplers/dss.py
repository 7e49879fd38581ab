"""Sampler ``dss``: Dynamic Similarity Sampling (Sample4Geo §5) — batches of look-alike locations.

Mining: ``ctx.embed()`` (the engine embeds every training query and reference through the
evaluation path), then each query's top-(range + excluded) references through
:func:`geokit.retrieval.search` (streaming blocks, never the dense Q×R matrix). The query's own
reference is dropped, and, with ``exclude_conflicts`` (default), its declared conflicts
(``TrainSet.pair_conflicts``), which could never share its batch anyway. VIGOR declares its
semi-positives as conflicts only with ``semi_positive_conflicts: true``; by default (and in the
recipes, as in the released code) they stay in the mined lists.
What remains, most similar first, is the pair's neighbour list (one list per *pair*, so VIGOR
panoramas sharing a satellite keep their own lists). Batches are built from these lists by
:mod:`geokit_plugins.samplers._neighbour_batches`.

When mining happens — at the start of ``batches(ctx)`` for epoch ``e`` (1-based), i.e. with the
weights left by epoch ``e − 1``:

- ``e == 1`` only with ``zero_shot: true`` (the initial / pretrained weights);
- every ``e > 1`` with ``(e − 1) % every == 0``: with ``every: 4`` before epochs 5, 9, 13, …, using
  the model after epochs 4, 8, 12 — the released Sample4Geo schedule, where the lists mined at
  the evaluation after epoch 4 drive epochs 5–8;
- also whenever lists are needed but none are held (e.g. a resume with a changed ``every``).

Epochs before the first mining are built by the ``warm_start`` sampler (default ``gps`` when the
dataset has reference GPS, else ``random``), created with ``geokit.registry.create`` and given
``warm_start_options`` (default: this sampler's ``select``/``range``/``hard_fraction``/
``last_batch``/``walk`` for ``gps``, ``last_batch`` for ``random``). So the Sample4Geo recipe is simply::

    sampler: {name: dss, every: 4}          # GPS for epochs 1-4, DSS re-mined every 4 epochs

Resume: ``state_dict`` holds the mined lists (N × range int32), the epoch they were mined for and
the warm-start sampler's name and state; a resumed run uses the same lists until the next
scheduled mining, so it builds the same batches as an uninterrupted one.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from pydantic import Field

import geokit
from geokit.errors import GeokitError
from geokit.sampling import EpochContext
from geokit_plugins.samplers._neighbour_batches import NeighbourOptions, epoch_batches, resolve_depth

log = logging.getLogger("geokit.sampler.dss")  # under "geokit": goes to the run log


class DssOptions(NeighbourOptions):
    every: int = Field(4, ge=1, description="epochs between minings")
    warm_start: str | None = Field(
        None, description="sampler before the first mining (default: gps with reference GPS, else random)"
    )
    warm_start_options: dict[str, Any] | None = Field(None, description="options of the warm-start sampler")
    zero_shot: bool = Field(False, description="mine before epoch 1 with the initial weights")
    exclude_conflicts: bool = Field(
        True, description="drop a pair's declared conflicts (semi-positives) from its mined list"
    )
    chunk_size: int | None = Field(
        None, ge=1, description="queries per scoring block; null: auto (geokit.retrieval.BLOCK_BYTES per block)"
    )


def mine_neighbours(
    query: np.ndarray,
    reference: np.ndarray,
    pair_reference: np.ndarray,
    depth: int,
    *,
    conflicts: np.ndarray | None = None,
    chunk_size: int | None = None,
) -> np.ndarray:
    """``(N, depth)`` int32: per training pair, the most similar references other than its own
    (and other than ``conflicts[i]``), most similar first, ``-1`` padded."""
    from geokit.retrieval import search

    n_refs = len(reference)
    extra = 1 + (conflicts.shape[1] if conflicts is not None else 0)
    k = min(depth + extra, n_refs)
    _, idx = search(query, reference, k, chunk_size=chunk_size)
    drop = idx == pair_reference[:, None]
    if conflicts is not None and conflicts.shape[1]:
        drop |= (idx[:, :, None] == conflicts[:, None, :]).any(-1)
    keep = np.argsort(drop, axis=1, kind="stable")[:, :depth]  # dropped entries move to the end
    out = np.take_along_axis(idx, keep, 1)
    out[np.take_along_axis(drop, keep, 1)] = -1
    if out.shape[1] < depth:
        out = np.pad(out, ((0, 0), (0, depth - out.shape[1])), constant_values=-1)
    return out.astype(np.int32 if n_refs < 2**31 else np.int64)


class DssSampler:
    """Dynamic Similarity Sampling with a warm-start sampler before the first mining."""

    def __init__(self, options: DssOptions):
        if options.warm_start == "dss":
            raise GeokitError(
                "sampler.warm_start=dss: the warm-start sampler of dss must be another sampler "
                "(gps, random, or a plugin's)"
            )
        self.options = options
        self.lists: np.ndarray | None = None
        self.mined_epoch: int | None = None
        self._delegate: Any = None
        self._delegate_name: str | None = None
        self._delegate_state: dict[str, Any] | None = None

    # ---------------------------------------------------------------- schedule

    def first_mining(self) -> int:
        return 1 if self.options.zero_shot else self.options.every + 1

    def mines_before(self, epoch: int) -> bool:
        """Whether the scheduled mining happens before ``epoch`` (1-based)."""
        if epoch == 1:
            return self.options.zero_shot
        return (epoch - 1) % self.options.every == 0

    # ---------------------------------------------------------------- warm start

    def delegate(self, ctx: EpochContext) -> Any:
        if self._delegate is None:
            from geokit.registry import create

            o = self.options
            name = o.warm_start or self._delegate_name or ("gps" if ctx.train.has_gps else "random")
            if name == "dss":
                raise GeokitError("sampler.warm_start=dss: choose another warm-start sampler")
            if o.warm_start_options is not None:
                opts: dict[str, Any] = dict(o.warm_start_options)
            elif name == "gps":
                opts = {
                    "select": o.select,
                    "range": o.range,
                    "hard_fraction": o.hard_fraction,
                    "last_batch": o.last_batch,
                    "walk": o.walk,
                }
            elif name == "random":
                opts = {"last_batch": o.last_batch}
            else:
                opts = {}
            self._delegate = create("sampler", name, opts)
            self._delegate_name = name
            if self._delegate_state is not None:
                self._delegate.load_state_dict(self._delegate_state)
                self._delegate_state = None
        return self._delegate

    # ---------------------------------------------------------------- epochs

    def mine(self, ctx: EpochContext, depth: int) -> None:
        emb = ctx.embed()
        train = ctx.train
        q, r = np.asarray(emb.query), np.asarray(emb.reference)
        if len(q) != len(train) or len(r) != len(train.reference_paths):
            raise GeokitError(
                f"dss: embed() returned {len(q)} queries and {len(r)} references for dataset "
                f"'{ctx.dataset_name}' with {len(train)} pairs and "
                f"{len(train.reference_paths)} references"
            )
        conflicts = train.pair_conflicts if self.options.exclude_conflicts else None
        self.lists = mine_neighbours(
            q, r, train.pair_reference, depth, conflicts=conflicts, chunk_size=self.options.chunk_size
        )
        self.mined_epoch = ctx.epoch
        log.info("dss: mined %d neighbours for %d pairs before epoch %d", depth, len(train), ctx.epoch)

    def batches(self, ctx: EpochContext) -> list[np.ndarray]:
        o = self.options
        select, range_ = resolve_depth(o.select, o.range, ctx.batch_size)
        have = (
            self.lists is not None
            and len(self.lists) == len(ctx.train)
            and self.mined_epoch is not None
            and self.mined_epoch <= ctx.epoch
        )
        due = self.mines_before(ctx.epoch) and self.mined_epoch != ctx.epoch
        if due or (not have and ctx.epoch >= self.first_mining()):
            self.mine(ctx, range_)
        elif not have:
            return self.delegate(ctx).batches(ctx)
        assert self.lists is not None  # mined above, or kept from an earlier epoch
        return epoch_batches(ctx, self.lists, o, select=select, range_=range_)

    # ---------------------------------------------------------------- resume

    def state_dict(self) -> dict[str, Any]:
        if self._delegate is not None:
            d_state: dict[str, Any] | None = self._delegate.state_dict()
        else:
            d_state = self._delegate_state
        return {
            "version": 1,
            "mined_epoch": self.mined_epoch,
            "lists": self.lists,
            "warm_start": self._delegate_name,
            "warm_start_state": d_state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if int(state.get("version", 1)) != 1:
            raise GeokitError(f"dss sampler state has unknown version {state.get('version')}")
        lists = state.get("lists")
        self.lists = None if lists is None else np.asarray(lists)
        self.mined_epoch = None if state.get("mined_epoch") is None else int(state["mined_epoch"])
        self._delegate_name = state.get("warm_start") or None
        self._delegate = None
        self._delegate_state = state.get("warm_start_state")


@geokit.hookimpl
def geokit_register_samplers(registry):
    registry.add(
        "dss",
        DssSampler,
        options=DssOptions,
        summary="Dynamic Similarity Sampling: mined look-alikes share a batch (Sample4Geo)",
    )
