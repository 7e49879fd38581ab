"""The index file and :class:`GeoIndex` (load, save, search).

An index file is one safetensors file (no pickle), written atomically:

- ``vectors`` (``flat``): the ``(N, D)`` unit embeddings, float32 or float16; searched exactly by
  :func:`geokit.retrieval.search` (the one retrieval path, ties by lower index);
- ``faiss`` (``ivf``, ``ivfpq``, ``hnsw``): the serialised faiss index (inner product on unit
  vectors), searched by faiss;
- ``latlon`` ``(N, 2)`` float64 degrees (NaN where unknown) and ``paths`` (UTF-8, one per line);
- metadata ``geokit_index``: JSON with the index type and parameters, the count and dimension,
  the encoder record of the checkpoint that embedded the tiles (``encoder``, ``embedding_dim``,
  ``mean``, ``std``, ``query_size``, ``reference_size``) and a SHA-256 fingerprint of its encoder
  weights, so that embedding queries with another model is refused; plus a CRC-32 of each
  payload, so a corrupt or truncated file is a clear :class:`GeokitError`, never a crash or
  silently wrong results.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geokit.checkpoint import RECORD_KEYS
from geokit.errors import GeokitError
from geokit.retrieval._spec import IndexSpec

FORMAT = 1
META_KEY = "geokit_index"


def crc32(a: np.ndarray) -> int:
    """The CRC-32 the index file records for each payload."""
    return zlib.crc32(np.ascontiguousarray(a).data.cast("B")) & 0xFFFFFFFF


def new_meta(spec: IndexSpec, n: int, dim: int, meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """The metadata of an index of ``n`` vectors being built (after checking ``spec`` fits them)."""
    spec.check(n, dim)
    if n == 0:
        raise GeokitError("no references to index")
    return {
        "format": FORMAT,
        "type": spec.type,
        "count": n,
        "dim": dim,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(meta or {}),
    }


def location_tensors(paths: Sequence[str], latlon: np.ndarray) -> dict[str, np.ndarray]:
    """The ``latlon`` and ``paths`` payloads of an index file (paths one per line, so none may
    hold a line break)."""
    for p in paths:
        if "\n" in p:
            raise GeokitError(f"reference path contains a line break: {p!r}")
    return {
        "latlon": np.ascontiguousarray(latlon, dtype=np.float64).reshape(-1, 2),
        "paths": np.frombuffer("\n".join(paths).encode("utf-8"), dtype=np.uint8).copy(),
    }


class GeoIndex:
    """Embeddings of geo-tagged reference tiles, searchable, with their paths and lat/lon."""

    tiles_root: str | None = None  # the gallery folder its tile paths were checked against (load)

    def __init__(
        self,
        meta: dict[str, Any],
        paths: list[str],
        latlon: np.ndarray,
        *,
        vectors: np.ndarray | None = None,
        faiss_index: Any = None,
        source: str = "",
    ):
        self.meta = meta
        self.paths = paths
        self.latlon = latlon
        self.vectors = vectors
        self.faiss_index = faiss_index
        self.source = source
        self._unit: Any = None

    @property
    def type(self) -> str:
        return self.meta["type"]

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    def __len__(self) -> int:
        return len(self.paths)

    def gallery(self) -> np.ndarray:
        """The L2-normalised float32 vectors of an exact (``flat``) index, for re-rankers."""
        if self.vectors is None:
            raise GeokitError(
                f"this {self.type} index does not keep its vectors, which the recorded "
                "re-rankers need; build the index with --type flat"
            )
        if self._unit is None:
            from geokit.retrieval._search import as_matrix

            self._unit = as_matrix(self.vectors)
        return self._unit.numpy()

    def search(
        self,
        query: np.ndarray,
        k: int,
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, ids)`` per query row, best first (ids −1 where an ANN index found
        fewer than ``k``). ``nprobe``/``ef_search`` override the saved search parameters."""
        query = np.asarray(query, dtype=np.float32).reshape(-1, self.dim)
        k = max(1, min(int(k), len(self)))
        if self.vectors is not None:
            from geokit.retrieval._search import as_matrix, search

            if self._unit is None:  # convert the stored float16/float32 once
                self._unit = as_matrix(self.vectors)
            return search(query, self._unit, k)
        import faiss

        params = self.meta.get("params", {})
        ix = self.faiss_index
        if self.type in ("ivf", "ivfpq"):
            faiss.extract_index_ivf(ix).nprobe = int(nprobe or params.get("nprobe", IndexSpec.nprobe))
        elif self.type == "hnsw":
            ix.hnsw.efSearch = int(ef_search or params.get("ef_search", IndexSpec.ef_search))
        q = query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
        scores, ids = ix.search(np.ascontiguousarray(q, dtype=np.float32), k)
        return scores, ids

    # --------------------------------------------------------------------------- files

    def save(self, path: str | Path) -> None:
        """Write the index file atomically (see the module docstring for the layout)."""
        from safetensors.numpy import save_file

        from geokit.checkpoint import atomic_write

        tensors = location_tensors(self.paths, self.latlon)
        if self.vectors is not None:
            tensors["vectors"] = np.ascontiguousarray(self.vectors)
        else:
            import faiss

            tensors["faiss"] = faiss.serialize_index(self.faiss_index)
        meta = dict(self.meta, checksums={k: crc32(v) for k, v in tensors.items()})
        self.meta = meta
        atomic_write(path, lambda p: save_file(tensors, str(p), metadata={META_KEY: json.dumps(meta)}))

    @classmethod
    def load(cls, path: str | Path, *, tiles_root: str | Path | None = None, allow_outside: bool = False) -> GeoIndex:
        """Read an index file; a missing, foreign, corrupt or truncated file is a GeokitError.

        The stored tile paths must lie inside one gallery folder (``tiles_root``; default: the
        folder of the references the index was built from, as it records): an index that names
        files elsewhere (``..`` escapes, absolute paths to other places, the whole filesystem)
        is refused, so reading tiles (``locate --sheet``) never reads outside the gallery unless
        ``allow_outside`` says so."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise GeokitError(f"index not found: {path}")
        hint = "rebuild it with 'geokit index build'"
        try:
            with safe_open(str(path), framework="numpy") as fh:
                raw = (fh.metadata() or {}).get(META_KEY)
                if raw is None:
                    raise GeokitError(
                        f"{path} is a safetensors file but not a geokit index (no '{META_KEY}' metadata); {hint}"
                    )
                meta = json.loads(raw)
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - a safetensors handle
        except GeokitError:
            raise
        except Exception as exc:  # noqa: BLE001 - any unreadable file is one error
            raise GeokitError(
                f"{path} is not a readable geokit index: it is truncated, corrupt or "
                f"not an index file ({type(exc).__name__}: {exc}); {hint}"
            ) from None
        if meta.get("format") != FORMAT:
            raise GeokitError(
                f"{path}: index format {meta.get('format')} is not supported by this geokit (format {FORMAT}); {hint}"
            )
        sums = meta.get("checksums", {})
        for name, arr in tensors.items():
            if name in sums and crc32(arr) != sums[name]:
                raise GeokitError(f"{path}: the '{name}' data fails its checksum: the file is corrupt; {hint}")
        try:
            paths = tensors["paths"].tobytes().decode("utf-8").split("\n") if len(tensors["paths"]) else []
            latlon = tensors["latlon"].reshape(-1, 2)
        except (KeyError, UnicodeDecodeError) as exc:
            raise GeokitError(f"{path}: index metadata is damaged ({exc}); {hint}") from None
        vectors: Any = None
        faiss_index: Any = None
        if "vectors" in tensors:
            vectors = tensors["vectors"]
        elif "faiss" in tensors:
            import faiss

            try:
                faiss_index = faiss.deserialize_index(tensors["faiss"])
            except Exception as exc:  # noqa: BLE001 - faiss raises RuntimeError or worse
                raise GeokitError(f"{path}: the faiss index inside is corrupt ({exc}); {hint}") from None
        else:
            raise GeokitError(f"{path}: holds neither 'vectors' nor 'faiss' data; {hint}")
        n = len(vectors) if vectors is not None else faiss_index.ntotal
        if not (n == len(paths) == len(latlon) == meta.get("count")):
            raise GeokitError(
                f"{path}: inconsistent index ({n} vectors, {len(paths)} paths, "
                f"{len(latlon)} locations, count {meta.get('count')}); {hint}"
            )
        if (
            not isinstance(meta.get("dim"), int)
            or (vectors is not None and vectors.ndim != 2)
            or (faiss_index is not None and faiss_index.d != meta.get("dim"))
            or (vectors is not None and vectors.shape[1] != meta.get("dim"))
        ):
            raise GeokitError(
                f"{path}: inconsistent index (dimension {short_dim(vectors, faiss_index)} "
                f"vs recorded {meta.get('dim')!s:.20}); {hint}"
            )
        params = meta.get("params", {})
        bad = [
            k
            for k in ("nprobe", "ef_search", "ef_construction", "hnsw_m")
            if k in (params if isinstance(params, dict) else {})
            and not (isinstance(params[k], int) and 1 <= params[k] <= 1 << 16)
        ]
        if not isinstance(params, dict) or bad:  # search would allocate what these say
            raise GeokitError(
                f"{path}: index metadata is damaged (search parameter "
                f"{', '.join(bad) or 'params'} out of range); {hint}"
            )
        record = meta.get("encoder_record")
        if record is not None:
            from geokit.checkpoint import validate_record

            if not isinstance(record, dict):
                raise GeokitError(f"{path}: index metadata is damaged (encoder_record); {hint}")
            validate_record(record, f"{path} (the encoder record it keeps)")
        index = cls(meta, paths, latlon, vectors=vectors, faiss_index=faiss_index, source=str(path))
        index.tiles_root = check_tile_paths(paths, meta, path, tiles_root, allow_outside)
        return index

    # --------------------------------------------------------------------------- checkpoints

    def check_encoder(
        self, record: Mapping[str, Any], weights_fingerprint: str | None, source: str = "the checkpoint"
    ) -> None:
        """Refuse an encoder that is not the one that embedded this index."""
        mine = self.meta.get("encoder_record", {})
        diff = [
            k
            for k in RECORD_KEYS
            if k in mine and json.dumps(mine[k], sort_keys=True) != json.dumps(record.get(k), sort_keys=True)
        ]
        if diff:
            from geokit.registry import short_repr

            shown = "; ".join(f"{k}: index {short_repr(mine[k])} vs {short_repr(record.get(k))}" for k in diff[:3])
            raise GeokitError(
                f"{source} does not match the encoder that built index {self.source or ''}"
                f" ({shown}). Use the checkpoint the index was built with "
                f"({self.meta.get('checkpoint')}) or rebuild the index."
            )
        want = self.meta.get("encoder_fingerprint")
        if want and weights_fingerprint and want != weights_fingerprint:
            raise GeokitError(
                f"{source} has the same architecture as the encoder that built index "
                f"{self.source or ''} but different weights (fingerprint "
                f"{weights_fingerprint[:12]} vs {want[:12]}); its embeddings would not be "
                f"comparable. Use {self.meta.get('checkpoint')} or rebuild the index."
            )


def short_dim(vectors: Any, faiss_index: Any) -> str:
    if vectors is not None:
        return "x".join(str(d) for d in vectors.shape)
    return str(getattr(faiss_index, "d", "?"))


def recorded_tiles_root(meta: Mapping[str, Any], paths: Sequence[str]) -> str | None:
    """The gallery folder an index records: its references CSV's folder, the references folder,
    else the folder all its tiles share."""
    src = meta.get("references")
    if isinstance(src, str) and src and " (" not in src:
        return os.path.dirname(os.path.abspath(src)) if src.lower().endswith(".csv") else os.path.abspath(src)
    absolute = [p for p in paths if os.path.isabs(p)]
    if not absolute or len(absolute) != len(paths):
        return None
    try:
        return os.path.commonpath(absolute) if len(absolute) > 1 else os.path.dirname(absolute[0])
    except ValueError:
        return None


def check_tile_paths(
    paths: Sequence[str],
    meta: Mapping[str, Any],
    source: Any,
    tiles_root: str | Path | None = None,
    allow_outside: bool = False,
) -> str | None:
    """The gallery root; refuses stored paths outside it (see :meth:`GeoIndex.load`)."""
    root = os.path.abspath(os.fspath(tiles_root)) if tiles_root is not None else recorded_tiles_root(meta, paths)
    if allow_outside:
        return root
    how = (
        "Pass --tiles-root FOLDER to name the folder that holds its tiles, or "
        "--allow-outside-paths if you trust this index file"
    )
    for n, p in enumerate(paths):
        if "\x00" in p:
            raise GeokitError(f"{source}: tile path {n + 1} contains a NUL byte; the index is damaged")
    if root is None:  # relative paths (read from the working folder): none may climb out of it
        for n, p in enumerate(paths):
            norm = os.path.normpath(p)
            if os.path.isabs(p) or norm == ".." or norm.startswith(".." + os.sep):
                raise GeokitError(
                    f"{source}: tile path {n + 1} ({p[:200]}) leaves the folder its "
                    f"relative tile paths are read from; geokit does not read it. {how}."
                )
        return None
    if os.path.dirname(root) == root:  # "/": an index naming files all over the filesystem
        raise GeokitError(f"{source}: its tiles are not in one gallery folder (they share only {root}). {how}.")
    prefix = root.rstrip(os.sep) + os.sep
    for n, p in enumerate(paths):
        full = os.path.normpath(os.path.join(root, p))
        if not full.startswith(prefix):
            raise GeokitError(
                f"{source}: tile path {n + 1} ({p[:200]}) is outside the gallery folder "
                f"{root}; geokit does not read files outside it. {how}."
            )
    return root
