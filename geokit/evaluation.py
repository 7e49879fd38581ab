"""Kept so that ``import geokit.evaluation`` keeps working: the code lives in :mod:`geokit.engine.evaluation`."""

from geokit.engine.evaluation import (
    METRIC_ORDER,
    EvalResult,
    Retrieval,
    apply_checkpoint_record,
    apply_rerankers,
    build_listed,
    build_rerankers,
    embed_view,
    evaluate,
    format_table,
    metrics_from_embeddings,
    protocol_metrics,
    read_embeddings,
    run_protocol,
    write_embeddings,
)

__all__ = [
    "METRIC_ORDER",
    "EvalResult",
    "Retrieval",
    "apply_checkpoint_record",
    "apply_rerankers",
    "build_listed",
    "build_rerankers",
    "embed_view",
    "evaluate",
    "format_table",
    "metrics_from_embeddings",
    "protocol_metrics",
    "read_embeddings",
    "run_protocol",
    "write_embeddings",
]
