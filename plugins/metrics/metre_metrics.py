"""Metric ``metres``: localisation error in metres of the top-1 reference (VIGOR, Game4Loc style).

Whenever a protocol knows GPS for its queries and references: ``median_error_m`` (the median
great-circle distance between a query and its top-1 reference, spherical Earth) and
``within_{d}m`` for each threshold (percent of queries whose top-1 reference lies within d metres;
25, 50 and 100 by default).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

import geokit
from geokit.geo import haversine_m


class MetresOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    thresholds: list[float] = Field([25.0, 50.0, 100.0], description="distances in metres for within_{d}m")


def top1_errors_m(query_gps: np.ndarray, reference_gps: np.ndarray, top1: np.ndarray) -> np.ndarray:
    """Metres between each query and its top-1 reference."""
    ref = reference_gps[top1]
    return haversine_m(query_gps[:, 0], query_gps[:, 1], ref[:, 0], ref[:, 1])


class MetreMetrics:
    k = 1

    def __init__(self, options: MetresOptions) -> None:
        self.thresholds = [float(t) for t in options.thresholds]

    def applies(self, eval_set: Any) -> bool:
        return bool(eval_set.has_gps)

    def compute(self, result: Any) -> dict[str, float]:
        es = result.eval_set
        err = top1_errors_m(es.query_gps, es.reference_gps, result.topk[:, 0])
        out = {"median_error_m": float(np.median(err)) if len(err) else 0.0}
        for t in self.thresholds:
            out[f"within_{t:g}m"] = float(100.0 * np.mean(err <= t)) if len(err) else 0.0
        return out


@geokit.hookimpl
def geokit_register_metrics(registry):
    registry.add(
        "metres",
        MetreMetrics,
        options=MetresOptions,
        summary="median_error_m and within_25/50/100m of the top-1 reference (needs GPS on both sides)",
    )
