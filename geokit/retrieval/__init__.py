"""Retrieval: exact streaming search, and indexes of geo-tagged reference tiles.

- :mod:`geokit.retrieval._search`: the one exact retrieval path (:func:`search`,
  :func:`score_blocks`, :func:`count_above`, :func:`exact_dots`, :data:`BLOCK_BYTES`), shared by
  evaluation metrics, similarity mining and ``geokit locate``.
- ``_spec``: index types and their parameters (:class:`IndexSpec`, the one source of the defaults);
  ``_index_file``: the index file format and :class:`GeoIndex` (load, save, search); ``_index_build``
  and ``_spool``: building, in memory or streamed through a spool file; ``_references``: the
  reference tiles to index (CSV, folder, dataset split).

Names are imported on first use (PEP 562), so ``geokit.retrieval.IndexSpec`` costs no numpy: the
CLI reads the index defaults from it on every start. :mod:`geokit.index` re-exports the index names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what mypy sees; at run time __getattr__ imports each name on first use
    from geokit.retrieval._index_build import build_from_checkpoint, build_index
    from geokit.retrieval._index_file import (
        FORMAT,
        META_KEY,
        GeoIndex,
        check_tile_paths,
        recorded_tiles_root,
        short_dim,
    )
    from geokit.retrieval._references import IMAGE_SUFFIXES, References, dataset_references, read_references
    from geokit.retrieval._search import (
        BLOCK_BYTES,
        COUNT_TILE,
        as_matrix,
        check_query,
        count_above,
        default_chunk,
        exact_dots,
        query_blocks,
        row_counts,
        score_blocks,
        search,
        torch_threads,
    )
    from geokit.retrieval._spec import TYPES, IndexSpec
    from geokit.retrieval._spool import Spool, spool_embeddings, write_index_from_spool

__all__ = [
    "BLOCK_BYTES",
    "COUNT_TILE",
    "FORMAT",
    "IMAGE_SUFFIXES",
    "META_KEY",
    "TYPES",
    "GeoIndex",
    "IndexSpec",
    "References",
    "Spool",
    "as_matrix",
    "build_from_checkpoint",
    "build_index",
    "check_query",
    "check_tile_paths",
    "count_above",
    "dataset_references",
    "default_chunk",
    "exact_dots",
    "query_blocks",
    "read_references",
    "recorded_tiles_root",
    "row_counts",
    "score_blocks",
    "search",
    "short_dim",
    "spool_embeddings",
    "torch_threads",
    "write_index_from_spool",
]

_WHERE = {
    "_search": (
        "BLOCK_BYTES",
        "COUNT_TILE",
        "as_matrix",
        "check_query",
        "count_above",
        "default_chunk",
        "exact_dots",
        "query_blocks",  # geokit.metrics walks the same blocks
        "row_counts",
        "score_blocks",
        "search",
        "torch_threads",
    ),
    "_spec": ("TYPES", "IndexSpec"),
    "_index_file": ("FORMAT", "META_KEY", "GeoIndex", "check_tile_paths", "recorded_tiles_root", "short_dim"),
    "_index_build": ("build_from_checkpoint", "build_index"),
    "_spool": ("Spool", "spool_embeddings", "write_index_from_spool"),
    "_references": ("IMAGE_SUFFIXES", "References", "dataset_references", "read_references"),
}
_MODULE = {name: module for module, names in _WHERE.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _MODULE.get(name)
    if module is None:
        raise AttributeError(f"module 'geokit.retrieval' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"geokit.retrieval.{module}"), name)
    globals()[name] = value  # once: later look-ups do not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE))
