"""Indexes of geo-tagged reference tiles (a facade: the code lives in :mod:`geokit.retrieval`).

- file format and :class:`GeoIndex`: ``geokit/retrieval/_index_file.py``;
- :class:`IndexSpec` (types, parameters, defaults): ``geokit/retrieval/_spec.py``;
- building: ``geokit/retrieval/_index_build.py`` (:func:`build_index`,
  :func:`build_from_checkpoint`) and ``geokit/retrieval/_spool.py`` (:func:`spool_embeddings`,
  :func:`write_index_from_spool`);
- reference lists: ``geokit/retrieval/_references.py``;
- encoders from checkpoints (:func:`load_encoder`, :class:`Encoder`, :func:`encoder_meta`,
  :func:`fingerprint`, ``RECORD_KEYS``): :mod:`geokit.checkpoint`.
"""

from geokit.checkpoint import RECORD_KEYS, Encoder, encoder_meta, fingerprint, load_encoder
from geokit.retrieval._index_build import build_from_checkpoint, build_index
from geokit.retrieval._index_file import FORMAT, META_KEY, GeoIndex, check_tile_paths, recorded_tiles_root, short_dim
from geokit.retrieval._references import IMAGE_SUFFIXES, References, dataset_references, read_references
from geokit.retrieval._spec import TYPES, IndexSpec
from geokit.retrieval._spool import Spool, spool_embeddings, write_index_from_spool

__all__ = [
    "FORMAT",
    "IMAGE_SUFFIXES",
    "META_KEY",
    "RECORD_KEYS",
    "TYPES",
    "Encoder",
    "GeoIndex",
    "IndexSpec",
    "References",
    "Spool",
    "build_from_checkpoint",
    "build_index",
    "check_tile_paths",
    "dataset_references",
    "encoder_meta",
    "fingerprint",
    "load_encoder",
    "read_references",
    "recorded_tiles_root",
    "short_dim",
    "spool_embeddings",
    "write_index_from_spool",
]
