"""Sampler ``inbatch``: per-step hard-negative mining inside a random pool (step-level sampler).

Before every step it draws a pool of ``pool`` × batch-size unused pairs, embeds them with the
model as it is at that step (``StepContext.embed_pairs``), and grows the batch greedily from a
random anchor: each next pair is the unused pool pair most similar (query↔reference, either
direction) to a pair already in the batch, skipping pairs whose reference is already there.
Unlike DSS, which mines every few epochs from embeddings of the whole set, the negatives are
as hard as the current model makes them; the cost is embedding ``pool`` × batch pairs per step.
The epoch ends when fewer than a batch of pairs is left. Its state (pairs used this epoch) is
saved per step, so a resumed run gets the same batches.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

import geokit


class InBatchOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pool: float = Field(4.0, ge=1.0, description="pool size per step, in batches")


class InBatchSampler:
    def __init__(self, options: InBatchOptions) -> None:
        self.pool = float(options.pool)
        self.epoch = 0
        self.used = np.zeros(0, dtype=bool)

    def start_epoch(self, ctx: Any) -> None:
        self.epoch = ctx.epoch
        self.used = np.zeros(len(ctx.train), dtype=bool)

    def next_batch(self, ctx: Any) -> np.ndarray | None:
        if self.epoch != ctx.epoch or len(self.used) != len(ctx.train):
            self.start_epoch(ctx)
        b = ctx.batch_size
        order = ctx.rng().permutation(len(ctx.train))  # the epoch's order, recomputed (stateless)
        free = order[~self.used[order]]
        if len(free) < b:
            return None
        pool = free[: max(b, int(round(self.pool * b)))]
        rng = ctx.rng(ctx.batch)
        pool = pool[rng.permutation(len(pool))]
        emb = ctx.embed_pairs(pool)
        sim = emb.query @ emb.reference.T  # (P, P): query i vs reference j
        sim = np.maximum(sim, sim.T)  # either direction
        refs = ctx.train.pair_reference[pool]
        chosen = [0]
        taken_refs = {int(refs[0])}
        best = sim[0].copy()  # each candidate's best similarity to the batch so far
        best[0] = -np.inf
        while len(chosen) < b:
            for j in np.argsort(-best, kind="stable"):
                if np.isfinite(best[j]) and int(refs[j]) not in taken_refs:
                    break
            else:
                break  # no candidate with a new reference left
            chosen.append(int(j))
            taken_refs.add(int(refs[j]))
            best = np.maximum(best, sim[j])
            best[chosen] = -np.inf
        if len(chosen) < 2:
            return None
        batch = pool[chosen]
        self.used[batch] = True
        return batch.astype(np.int64)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "used": self.used.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state.get("epoch", 0))
        self.used = np.asarray(state.get("used", np.zeros(0)), dtype=bool).copy()


@geokit.hookimpl
def geokit_register_samplers(registry):
    registry.add(
        "inbatch",
        InBatchSampler,
        options=InBatchOptions,
        summary="per-step hard negatives: greedy batch from a pool embedded at each step",
    )
