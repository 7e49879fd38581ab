"""Re-ranker ``qe``: α-weighted query expansion (Radenović et al., α-QE).

Each query is replaced by itself plus its top-``n`` references weighted by their similarity to
the power ``alpha`` (negative similarities count 0), then L2-normalised; the references stay as
they are. Off unless listed under ``rerankers``. Exact search, memory bounded by the block size.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

import geokit


class QEOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int = Field(3, ge=1, description="top references added to each query")
    alpha: float = Field(3.0, ge=0, description="weight = similarity ** alpha")


class QueryExpansion:
    def __init__(self, options: QEOptions) -> None:
        self.n, self.alpha = options.n, options.alpha

    def __call__(self, query: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from geokit.retrieval import search

        if len(query) == 0 or len(reference) == 0:
            return query, reference
        scores, idx = search(query, reference, self.n)
        w = (np.clip(scores, 0, None) ** self.alpha).astype(np.float32)  # (Q, n)
        expanded = np.array(query, dtype=np.float32)
        for a in range(0, len(query), 4096):  # (block, n, D) at a time, not (Q, n, D)
            b = a + 4096
            expanded[a:b] += np.einsum("qn,qnd->qd", w[a:b], reference[idx[a:b]])
        return expanded, reference


def build_qe(options: QEOptions) -> Any:
    return QueryExpansion(options)


@geokit.hookimpl
def geokit_register_rerankers(registry):
    registry.add("qe", build_qe, options=QEOptions, summary="alpha query expansion over the top-n references")
