"""An example third-party geokit plugin: sampler ``blocks`` and dataset ``jsonl``.

Installed with ``pip install ./examples/plugin-example``, both appear in ``geokit plugins`` and
can be named in any config (``sampler: {name: blocks, block: 4}``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

import geokit
from geokit.augment import PairAugment
from geokit.data import CrossViewDataset, EvalSet, TrainSet
from geokit.sampling import EpochContext, pack_batches

# ------------------------------------------------------------------ sampler: route-order blocks


class BlocksOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    block: PositiveInt = Field(4, description="consecutive pairs kept together")
    last_batch: Literal["drop", "keep"] = "drop"


class BlocksSampler:
    """Keeps runs of consecutive pairs together: frames recorded along a route are neighbours,
    so each batch holds a few short stretches of road (hard negatives without GPS)."""

    def __init__(self, options: BlocksOptions):
        self.options = options

    def batches(self, ctx: EpochContext) -> list[np.ndarray]:
        n, size = len(ctx.train), self.options.block
        starts = ctx.rng().permutation(np.arange(0, n, size))
        order = np.concatenate([np.arange(s, min(s + size, n)) for s in starts])
        return pack_batches(order, ctx.train, ctx.batch_size, self.options.last_batch)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


# ------------------------------------------------------------------ dataset: JSON lines


class JsonlOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    root: Path
    query_size: tuple[PositiveInt, PositiveInt] = (64, 256)
    reference_size: tuple[PositiveInt, PositiveInt] = (128, 128)


class JsonlDataset(CrossViewDataset):
    """``train.jsonl`` / ``test.jsonl``: one ``{"query", "reference"[, "lat", "lon"]}`` per line."""

    def __init__(self, options: JsonlOptions):
        self.root = Path(options.root)
        self.query_size, self.reference_size = tuple(options.query_size), tuple(options.reference_size)
        self._augment = PairAugment()

    def _read(self, split: str) -> tuple[list[str], list[str], np.ndarray, np.ndarray | None]:
        path = self.root / f"{split}.jsonl"
        if not path.is_file():
            raise geokit.GeokitError(f"dataset 'jsonl': {path} not found")
        queries, refs, index, gps = [], [], {}, {}
        pair_ref = []
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                q, r = str(self.root / row["query"]), str(self.root / row["reference"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise geokit.GeokitError(f"{path} line {n}: not a {{query, reference}} object ({exc})") from None
            queries.append(q)
            pair_ref.append(index.setdefault(r, len(index)))
            if "lat" in row and "lon" in row:
                gps[index[r]] = (float(row["lat"]), float(row["lon"]))
        refs = list(index)
        ref_gps = np.array([gps[j] for j in range(len(refs))]) if len(gps) == len(refs) else None
        return queries, refs, np.asarray(pair_ref), ref_gps

    def train_set(self) -> TrainSet:
        q, r, pair_ref, gps = self._read("train")
        return TrainSet(q, r, pair_ref, reference_gps=gps)

    def eval_set(self, split: str | None = None) -> EvalSet:
        split = self.check_split(split)
        q, r, pair_ref, gps = self._read(split)
        return EvalSet(q, r, pair_ref, np.arange(len(r)), reference_gps=gps, name=split)

    def augment_pair(self, query, reference, rng):
        return self._augment(query, reference, rng)


# ------------------------------------------------------------------ registration


@geokit.hookimpl
def geokit_register_samplers(registry):
    registry.add("blocks", BlocksSampler, options=BlocksOptions)


@geokit.hookimpl
def geokit_register_datasets(registry):
    registry.add("jsonl", JsonlDataset, options=JsonlOptions, summary="pairs listed in train.jsonl / test.jsonl")
