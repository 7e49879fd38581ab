"""The ``--save-embeddings`` file: both sides' embeddings and everything the protocol needs to
recompute its metrics (labels, semi-positives, match table, GPS), in safetensors, no pickle.

Private to :mod:`geokit.engine.evaluation`, which re-exports :func:`write_embeddings` and
:func:`read_embeddings`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geokit.data import EvalSet
from geokit.errors import GeokitError

if TYPE_CHECKING:
    from geokit.engine.evaluation import EvalResult


def _i64(x: Any) -> Any:
    import torch

    return torch.from_numpy(np.array(x, dtype=np.int64))  # a copy: never shares memory


def write_embeddings(path: str | Path, result: EvalResult) -> None:
    """The ``--save-embeddings`` file (ARCHITECTURE.md contract): everything
    :func:`metrics_from_embeddings` needs to reproduce the protocol's metrics."""
    import torch
    from safetensors.torch import save_file

    from geokit.checkpoint import atomic_write
    from geokit.embedding import embedding_dtype

    es = result.eval_set
    tensors = {
        "query": torch.from_numpy(np.array(result.query, dtype=embedding_dtype())),
        "reference": torch.from_numpy(np.array(result.reference, dtype=embedding_dtype())),
        "query_labels": _i64(es.query_labels),
        "reference_labels": _i64(es.reference_labels),
    }
    if es.semi_positives is not None:
        tensors["semi_positives"] = _i64(es.semi_positives)
    if es.matches is not None:
        tensors["match_query"] = _i64(es.matches.query)
        tensors["match_reference"] = _i64(es.matches.reference)
        if es.matches.weight is not None:
            tensors["match_weight"] = torch.from_numpy(np.array(es.matches.weight, dtype=np.float64))
    for key in ("query_gps", "reference_gps"):
        if getattr(es, key) is not None:
            tensors[key] = torch.from_numpy(np.array(getattr(es, key), dtype=np.float64))
    meta = {"format": "geokit-embeddings/2", "split": es.name, "multi_positive": str(bool(es.multi_positive)).lower()}
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=meta))


def read_embeddings(path: str | Path) -> tuple[EvalSet, np.ndarray, np.ndarray]:
    """The protocol and embeddings of a ``--save-embeddings`` file (image paths are not stored)."""
    from safetensors import safe_open

    from geokit.data import MatchTable

    try:
        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
            t = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - a safetensors handle
    except Exception as exc:  # noqa: BLE001 (any unreadable file is one error)
        raise GeokitError(f"cannot read embeddings file {path}: {exc}") from None
    missing = [k for k in ("query", "reference", "query_labels", "reference_labels") if k not in t]
    if missing:
        raise GeokitError(f"{path} is not a geokit embeddings file (missing {', '.join(missing)})")
    matches = None
    if "match_query" in t:
        matches = MatchTable(t["match_query"], t["match_reference"], t.get("match_weight"))
    nq, nr = len(t["query"]), len(t["reference"])
    es = EvalSet(
        [f"query {i}" for i in range(nq)],
        [f"reference {j}" for j in range(nr)],
        t["query_labels"],
        t["reference_labels"],
        semi_positives=t.get("semi_positives"),
        multi_positive=meta.get("multi_positive") == "true",
        query_gps=t.get("query_gps"),
        reference_gps=t.get("reference_gps"),
        name=meta.get("split", "test"),
        matches=matches,
    )
    return es, t["query"], t["reference"]
