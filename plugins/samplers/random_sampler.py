"""Sampler ``random``: a seeded shuffle cut into batches in which no reference appears twice."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

import geokit
from geokit.sampling import EpochContext, pack_batches


class RandomOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    last_batch: Literal["drop", "keep"] = Field("drop", description="what to do with a partial last batch")


class RandomSampler:
    """Uniformly shuffled batches; pairs sharing a reference are deferred to a later batch."""

    def __init__(self, options: RandomOptions):
        self.options = options

    def batches(self, ctx: EpochContext) -> list[np.ndarray]:
        order = ctx.rng().permutation(len(ctx.train))
        return pack_batches(order, ctx.train, ctx.batch_size, self.options.last_batch)

    def state_dict(self) -> dict[str, Any]:
        return {}  # a pure function of (seed, epoch)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@geokit.hookimpl
def geokit_register_samplers(registry):
    registry.add(
        "random",
        RandomSampler,
        options=RandomOptions,
        summary="seeded random batches, never one reference twice in a batch",
    )
