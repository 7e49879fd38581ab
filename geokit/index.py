"""Indexes of geo-tagged reference tiles: build (streaming), save, load, search.

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

Building streams. :func:`build_index` (in memory) embeds ``chunk`` references at a time and adds
them to the index, so memory is the index itself plus one chunk (``ivf``/``ivfpq`` first embed a
training sample, kept for reuse, of at most ``train_size`` vectors). ``geokit index build``
(:func:`build_from_checkpoint`) goes further for galleries larger than memory: the embeddings
stream to a spool file on disk (under torchrun every rank embeds its share of each chunk and
rank 0 writes), then :func:`write_index_from_spool` writes the same file from it, reading the
spool piece by piece (a flat index never sits in memory; a faiss index is trained on a sample).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from geokit.errors import GeokitError

FORMAT = 1
META_KEY = "geokit_index"
TYPES = ("flat", "ivf", "ivfpq", "hnsw")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp")
# The parts of a checkpoint record that decide what an embedding means.
RECORD_KEYS = ("encoder", "embedding_dim", "mean", "std", "query_size", "reference_size")


@dataclass
class IndexSpec:
    """Index type and its key parameters (None: a default chosen from the gallery size).

    - ``flat``: exact; ``dtype`` float16 halves file and memory (scores change by ~1e-3).
    - ``ivf``: ``nlist`` inverted lists (default ≈ 4·√N), searched ``nprobe`` lists at a time.
    - ``ivfpq``: as ``ivf`` with product-quantised vectors: ``m`` sub-vectors (must divide D)
      of ``nbits`` bits each — D·4 bytes per vector become m·nbits/8.
    - ``hnsw``: graph with ``hnsw_m`` links per node, ``ef_construction`` / ``ef_search`` (raise
      ``ef_search`` for big galleries: recall@1 0.999 at 100k but 0.77 at 1M; 256 gave 0.96).
    """

    type: Literal["flat", "ivf", "ivfpq", "hnsw"] = "flat"
    dtype: Literal["float32", "float16"] = "float32"
    nlist: int | None = None
    nprobe: int = 16
    m: int | None = None
    nbits: int = 8
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 64
    train_size: int | None = None
    seed: int = 0

    def check(self, n: int, dim: int) -> None:
        if self.type not in TYPES:
            raise GeokitError(f"index type '{self.type}' is not one of {', '.join(TYPES)}")
        if self.type == "ivfpq":
            m = self.m_for(dim)
            if dim % m:
                raise GeokitError(f"ivfpq: m={m} must divide the embedding dimension {dim}")
        if self.type in ("ivf", "ivfpq") and n < self.nlist_for(n):
            raise GeokitError(
                f"{self.type}: {n} references are fewer than nlist={self.nlist_for(n)}; "
                "use --type flat or a smaller --nlist"
            )
        # faiss's k-means refuses fewer training vectors than centroids (a C++ error otherwise)
        train = self.train_size_for(n, dim)
        if self.type in ("ivf", "ivfpq") and train < self.nlist_for(n):
            raise GeokitError(
                f"{self.type}: a training sample of {train} vectors is smaller than nlist="
                f"{self.nlist_for(n)}; raise IndexSpec.train_size or lower --nlist"
            )
        if self.type == "ivfpq" and not (1 <= self.nbits <= 16 and train >= 2**self.nbits):
            raise GeokitError(
                f"ivfpq: nbits={self.nbits} needs 1 ≤ nbits ≤ 16 and at least {2 ** min(self.nbits, 16):,} "
                f"training vectors (faiss trains {2 ** min(self.nbits, 16):,} centroids per "
                f"sub-quantiser), but {train} are available; lower --nbits (e.g. "
                f"{max(1, int(math.log2(max(train, 2))))}) or use --type ivf/flat"
            )

    def nlist_for(self, n: int) -> int:
        return int(self.nlist or max(1, min(65536, round(4 * math.sqrt(max(n, 1))))))

    def m_for(self, dim: int) -> int:
        if self.m:
            return int(self.m)
        for m in (64, 32, 16, 8, 4, 2, 1):  # ≤ 64 sub-quantisers, dividing dim
            if (dim % m == 0 and dim // m >= 4) or m == 1:
                return m
        return 1

    def train_size_for(self, n: int, dim: int) -> int:
        if self.type not in ("ivf", "ivfpq"):
            return 0
        want = self.train_size or max(64 * self.nlist_for(n), 2**self.nbits * 64 if self.type == "ivfpq" else 0)
        return int(min(n, want))


def _crc(a: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(a).data.cast("B")) & 0xFFFFFFFF


def fingerprint(tensors: Mapping[str, Any]) -> str:
    """SHA-256 of encoder weights (names, shapes, dtypes and bytes), independent of file layout."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        arr = t.detach().cpu().contiguous().numpy() if hasattr(t, "detach") else np.ascontiguousarray(t)
        h.update(f"{name}:{arr.dtype}:{arr.shape};".encode())
        h.update(arr.data.cast("B"))
    return h.hexdigest()


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
            from geokit.retrieval import as_matrix

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
            from geokit.retrieval import as_matrix, search

            if self._unit is None:  # convert the stored float16/float32 once
                self._unit = as_matrix(self.vectors)
            return search(query, self._unit, k)
        import faiss

        params = self.meta.get("params", {})
        ix = self.faiss_index
        if self.type in ("ivf", "ivfpq"):
            faiss.extract_index_ivf(ix).nprobe = int(nprobe or params.get("nprobe", 16))
        elif self.type == "hnsw":
            ix.hnsw.efSearch = int(ef_search or params.get("ef_search", 64))
        q = query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
        scores, ids = ix.search(np.ascontiguousarray(q, dtype=np.float32), k)
        return scores, ids

    # --------------------------------------------------------------------------- files

    def size_bytes(self) -> int:
        if self.vectors is not None:
            return int(self.vectors.nbytes)
        import faiss

        return int(faiss.serialize_index(self.faiss_index).nbytes)

    def save(self, path: str | Path) -> None:
        """Write the index file atomically (see the module docstring for the layout)."""
        from safetensors.numpy import save_file

        from geokit.checkpoint import atomic_write

        for p in self.paths:
            if "\n" in p:
                raise GeokitError(f"reference path contains a line break: {p!r}")
        tensors: dict[str, np.ndarray] = {
            "latlon": np.ascontiguousarray(self.latlon, dtype=np.float64).reshape(-1, 2),
            "paths": np.frombuffer("\n".join(self.paths).encode("utf-8"), dtype=np.uint8).copy(),
        }
        if self.vectors is not None:
            tensors["vectors"] = np.ascontiguousarray(self.vectors)
        else:
            import faiss

            tensors["faiss"] = faiss.serialize_index(self.faiss_index)
        meta = dict(self.meta, checksums={k: _crc(v) for k, v in tensors.items()})
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
            if name in sums and _crc(arr) != sums[name]:
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


# ------------------------------------------------------------------------------ building


def _new_faiss_index(spec: IndexSpec, n: int, dim: int) -> tuple[Any, dict[str, Any]]:
    """An empty inner-product faiss index of ``spec``'s type for ``n`` vectors, and the
    parameters the index file records (training, if any, is the caller's)."""
    import faiss

    metric = faiss.METRIC_INNER_PRODUCT
    if spec.type == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dim, spec.hnsw_m, metric)
        hnsw.hnsw.efConstruction = spec.ef_construction
        return hnsw, {"hnsw_m": spec.hnsw_m, "ef_construction": spec.ef_construction, "ef_search": spec.ef_search}
    nlist = spec.nlist_for(n)
    quantizer = faiss.IndexFlatIP(dim)  # faiss's Python wrapper keeps it alive with the index
    if spec.type == "ivf":
        return faiss.IndexIVFFlat(quantizer, dim, nlist, metric), {"nlist": nlist, "nprobe": spec.nprobe}
    m = spec.m_for(dim)
    pq = faiss.IndexIVFPQ(quantizer, dim, nlist, m, spec.nbits, metric)
    return pq, {"nlist": nlist, "nprobe": spec.nprobe, "m": m, "nbits": spec.nbits}


def build_index(
    embed: Callable[[np.ndarray], np.ndarray],
    n: int,
    dim: int,
    spec: IndexSpec,
    *,
    paths: Sequence[str],
    latlon: np.ndarray,
    meta: Mapping[str, Any] | None = None,
    chunk: int = 1024,
    show: bool | None = None,
) -> GeoIndex:
    """Build an index of ``n`` vectors, ``embed(positions)`` giving ``(len, dim)`` unit float32
    rows for an array of positions, called ``chunk`` positions at a time (memory: the index plus
    one chunk, plus the training sample for ``ivf``/``ivfpq``)."""
    from geokit.runtime import progress

    spec.check(n, dim)
    if n == 0:
        raise GeokitError("no references to index")
    starts = range(0, n, chunk)
    info: dict[str, Any] = {
        "format": FORMAT,
        "type": spec.type,
        "count": n,
        "dim": dim,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(meta or {}),
    }
    if spec.type == "flat":
        vectors = np.empty((n, dim), dtype=np.float16 if spec.dtype == "float16" else np.float32)
        for s in progress(starts, total=len(starts), desc="index: embed", enabled=show):
            vectors[s : s + chunk] = embed(np.arange(s, min(s + chunk, n)))
        info["params"] = {"dtype": spec.dtype}
        return GeoIndex(info, list(paths), latlon, vectors=vectors)

    cache: dict[int, np.ndarray] = {}
    index, params = _new_faiss_index(spec, n, dim)
    if spec.type != "hnsw":
        n_train = spec.train_size_for(n, dim)
        sample = np.sort(np.random.default_rng(spec.seed).choice(n, n_train, replace=False))
        train = np.empty((n_train, dim), dtype=np.float32)
        for s in progress(
            range(0, n_train, chunk), total=-(-n_train // chunk), desc="index: train sample", enabled=show
        ):
            train[s : s + chunk] = embed(sample[s : s + chunk])
        index.train(train)
        params["train_size"] = n_train
        # keep the sample's embeddings: they are added below without embedding them again
        cache = {int(p): train[i] for i, p in enumerate(sample)}
        del train
    for s in progress(starts, total=len(starts), desc="index: embed+add", enabled=show):
        pos = np.arange(s, min(s + chunk, n))
        todo = np.array([p for p in pos if p not in cache], dtype=np.int64)
        block = np.empty((len(pos), dim), dtype=np.float32)
        if len(todo):
            block[np.searchsorted(pos, todo)] = embed(todo)
        for i, p in enumerate(pos):
            if int(p) in cache:
                block[i] = cache.pop(int(p))
        index.add(block)
    info["params"] = params
    return GeoIndex(info, list(paths), latlon, faiss_index=index)


# ------------------------------------------------------------------------------ streaming build

# Dtype codes of the safetensors format, for the file written piece by piece.
_ST_DTYPES = {
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(np.float64): "F64",
    np.dtype(np.uint8): "U8",
}
_COPY_BLOCK = 1 << 22  # bytes copied at a time from a spool into the index file (4 MiB)


@dataclass
class Spool:
    """Embeddings streamed to a raw file on disk, row after row, with the CRC-32 of its bytes."""

    path: Path
    n: int
    dim: int
    dtype: np.dtype
    crc: int = 0

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as float32, read into memory (not memory-mapped: mapped pages
        would count towards the process's resident memory until unmapped)."""
        row = self.dim * self.dtype.itemsize
        with open(self.path, "rb") as fh:
            fh.seek(start * row)
            out = np.fromfile(fh, dtype=self.dtype, count=(stop - start) * self.dim)
        return out.reshape(-1, self.dim).astype(np.float32, copy=False)

    def take(self, positions: np.ndarray) -> np.ndarray:
        """Rows at sorted ``positions`` as float32 (a faiss training sample), one read each."""
        row = self.dim * self.dtype.itemsize
        out = np.empty((len(positions), self.dim), dtype=np.float32)
        with open(self.path, "rb") as fh:
            for k, p in enumerate(positions):
                fh.seek(int(p) * row)
                out[k] = np.frombuffer(fh.read(row), dtype=self.dtype)
        return out


def spool_embeddings(
    embed: Callable[[np.ndarray], np.ndarray],
    n: int,
    dim: int,
    path: str | Path,
    *,
    dtype: Any = np.float32,
    chunk: int = 1024,
    write: bool = True,
    show: bool | None = None,
) -> Spool:
    """Call ``embed(positions)`` ``chunk`` positions at a time, in order, and append the rows
    (cast to ``dtype``) to the raw file ``path``. Memory: one chunk.

    Under torchrun every rank calls this with the same arguments (``embed`` being
    :func:`geokit.distributed.embed_sharded`, which splits each chunk over the ranks and gathers
    it); only the rank with ``write`` true writes, the others only embed their shares."""
    from geokit.runtime import progress

    dtype = np.dtype(dtype)
    spool = Spool(Path(path), n, dim, dtype)
    starts = range(0, n, chunk)
    fh = open(spool.path, "wb") if write else None  # noqa: SIM115 - closed in the finally below
    try:
        for s in progress(starts, total=len(starts), desc="index: embed", enabled=show):
            rows = embed(np.arange(s, min(s + chunk, n)))
            if rows.shape != (min(s + chunk, n) - s, dim):
                raise GeokitError(
                    f"embedding gave rows of shape {rows.shape}, expected ({min(s + chunk, n) - s}, {dim})"
                )
            if fh is not None:
                data = np.ascontiguousarray(rows, dtype=dtype)
                spool.crc = zlib.crc32(data.data.cast("B"), spool.crc)
                fh.write(data.data.cast("B"))
    finally:
        if fh is not None:
            fh.close()
    return spool


def _safetensors_header(
    entries: Sequence[tuple[str, np.dtype, tuple[int, ...], int]], metadata: Mapping[str, str]
) -> bytes:
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    pos = 0
    for name, dtype, shape, nbytes in entries:
        header[name] = {"dtype": _ST_DTYPES[np.dtype(dtype)], "shape": list(shape), "data_offsets": [pos, pos + nbytes]}
        pos += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # as safetensors does: the data starts 8-byte aligned
    return len(raw).to_bytes(8, "little") + raw


def _file_crc(path: Path) -> int:
    crc = 0
    with open(path, "rb") as fh:
        while block := fh.read(_COPY_BLOCK):
            crc = zlib.crc32(block, crc)
    return crc


def write_index_from_spool(
    spool: Spool,
    spec: IndexSpec,
    output: str | Path,
    *,
    paths: Sequence[str],
    latlon: np.ndarray,
    meta: Mapping[str, Any] | None = None,
    chunk: int = 65536,
    show: bool | None = None,
) -> dict[str, Any]:
    """Turn spooled embeddings into the index file ``output`` (the layout :meth:`GeoIndex.save`
    writes, byte for byte the same tensors), without holding the vectors in memory.

    Memory ceiling: ``flat``: one copy block (4 MiB) plus the paths and lat/lon, whatever the
    gallery size; ``ivf``/``ivfpq``: the faiss index itself (ivf: N·(4·D+8) bytes, ivfpq:
    N·(m·nbits/8+8)), up to about twice that while faiss grows its inverted lists, plus the
    training sample (≤ ``train_size`` rows of 4·D bytes) plus one ``chunk`` of rows; ``hnsw``:
    the index (N·(4·D + 8·hnsw_m) bytes or so) plus one chunk. BENCHMARKS.md ("Index build
    memory") has the measurements.
    Disk: the spool and the output file exist together until the spool is removed by the caller.
    Returns the index metadata written."""
    from geokit.checkpoint import atomic_write
    from geokit.runtime import progress

    n, dim = spool.n, spool.dim
    spec.check(n, dim)
    if n == 0:
        raise GeokitError("no references to index")
    for p in paths:
        if "\n" in p:
            raise GeokitError(f"reference path contains a line break: {p!r}")
    if len(paths) != n or len(latlon) != n:
        raise GeokitError(f"{n} embeddings but {len(paths)} paths and {len(latlon)} locations")
    info: dict[str, Any] = {
        "format": FORMAT,
        "type": spec.type,
        "count": n,
        "dim": dim,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(meta or {}),
    }
    small = {
        "latlon": np.ascontiguousarray(latlon, dtype=np.float64).reshape(-1, 2),
        "paths": np.frombuffer("\n".join(paths).encode("utf-8"), dtype=np.uint8).copy(),
    }
    faiss_file: Path | None = None
    big_dtype: np.dtype
    big_shape: tuple[int, ...]
    try:
        if spec.type == "flat":
            want = np.dtype(np.float16 if spec.dtype == "float16" else np.float32)
            if spool.dtype != want:
                raise GeokitError(f"spool holds {spool.dtype} rows but the index stores {want}")
            info["params"] = {"dtype": spec.dtype}
            big_name, big_dtype, big_shape, big_file, big_crc = "vectors", want, (n, dim), spool.path, spool.crc
        else:
            index, params = _faiss_from_spool(spool, spec, chunk, show)
            info["params"] = params
            import faiss

            faiss_file = spool.path.with_name(spool.path.name + ".faiss")
            faiss.write_index(index, str(faiss_file))
            del index  # the memory ceiling is one faiss index, not the index and its serialised copy
            size = faiss_file.stat().st_size
            big_name, big_dtype, big_shape, big_file, big_crc = (
                "faiss",
                np.dtype(np.uint8),
                (size,),
                faiss_file,
                _file_crc(faiss_file),
            )
        big_bytes = int(np.prod(big_shape)) * big_dtype.itemsize
        if big_file.stat().st_size != big_bytes:
            raise GeokitError(f"{big_file} holds {big_file.stat().st_size} bytes, expected {big_bytes}")
        info["checksums"] = {**{k: _crc(v) for k, v in small.items()}, big_name: big_crc}
        entries = [(k, v.dtype, v.shape, v.nbytes) for k, v in small.items()] + [
            (big_name, big_dtype, big_shape, big_bytes)
        ]
        header = _safetensors_header(entries, {META_KEY: json.dumps(info)})

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as out:
                out.write(header)
                for v in small.values():
                    out.write(memoryview(v).cast("B"))
                with open(big_file, "rb") as src:
                    blocks = range(0, big_bytes, _COPY_BLOCK)
                    for _ in progress(blocks, total=len(blocks), desc="index: write", enabled=show):
                        out.write(src.read(_COPY_BLOCK))

        atomic_write(output, write)
    finally:
        if faiss_file is not None:
            faiss_file.unlink(missing_ok=True)
    return info


def _faiss_from_spool(spool: Spool, spec: IndexSpec, chunk: int, show: bool | None) -> tuple[Any, dict[str, Any]]:
    """A faiss index of the spooled rows, trained on the same sample as :func:`build_index`."""

    from geokit.runtime import progress

    n, dim = spool.n, spool.dim
    index, params = _new_faiss_index(spec, n, dim)
    if spec.type != "hnsw":
        n_train = spec.train_size_for(n, dim)
        sample = np.sort(np.random.default_rng(spec.seed).choice(n, n_train, replace=False))
        train = spool.take(sample)
        index.train(train)
        del train
        params["train_size"] = n_train
    starts = range(0, n, chunk)
    for s in progress(starts, total=len(starts), desc="index: add", enabled=show):
        index.add(spool.read(s, min(s + chunk, n)))
    return index, params


# ------------------------------------------------------------------------------ reference lists


@dataclass
class References:
    """Reference tiles to index: image paths and lat/lon (NaN when unknown)."""

    paths: list[str]
    latlon: np.ndarray
    source: str = ""
    dataset: Any = None  # a CrossViewDataset whose load_image decodes them
    extra: dict[str, Any] = field(default_factory=dict)


def read_references(source: str | Path) -> References:
    """A CSV with columns ``path,lat,lon`` (paths relative to the CSV's folder), a folder holding
    ``references.csv`` (or exactly one ``.csv``), or a folder of images (no locations)."""
    source = Path(source)
    if source.is_dir():
        csvs = sorted(source.glob("*.csv"))
        named = source / "references.csv"
        if named.is_file():
            return _read_reference_csv(named)
        if len(csvs) == 1:
            return _read_reference_csv(csvs[0])
        if len(csvs) > 1:
            raise GeokitError(
                f"{source} holds several CSV files ({', '.join(c.name for c in csvs[:5])}); "
                "name the one listing the tiles (path,lat,lon) or call it references.csv"
            )
        images = sorted(str(p) for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise GeokitError(f"{source} holds no CSV and no images ({', '.join(IMAGE_SUFFIXES)})")
        return References(images, np.full((len(images), 2), np.nan), str(source))
    if source.is_file():
        return _read_reference_csv(source)
    raise GeokitError(f"references not found: {source} (give a CSV path,lat,lon or a folder)")


def _read_reference_csv(path: Path) -> References:
    root = path.parent
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip() for f in (reader.fieldnames or [])]
        reader.fieldnames = fields
        if "path" not in fields:
            raise GeokitError(
                f"{path}: missing column 'path' (found: {', '.join(fields) or 'nothing'}); "
                "the header must name path,lat,lon"
            )
        has_gps = "lat" in fields and "lon" in fields
        if ("lat" in fields) != ("lon" in fields):
            raise GeokitError(f"{path}: has only one of the columns lat/lon; give both or neither")
        paths, coords = [], []
        for line, row in enumerate(reader, start=2):
            p = (row.get("path") or "").strip()
            if not p:
                raise GeokitError(f"{path} line {line}: empty path")
            full = root / p
            if not full.is_file():
                raise GeokitError(f"{path} line {line}: image not found: {full}")
            paths.append(str(full))
            if has_gps:
                try:
                    lat, lon = float(row["lat"]), float(row["lon"])
                except (TypeError, ValueError):
                    raise GeokitError(
                        f"{path} line {line}: lat/lon {row.get('lat')!r}, {row.get('lon')!r} are not numbers"
                    ) from None
                if not (abs(lat) <= 90 and abs(lon) <= 180):
                    raise GeokitError(f"{path} line {line}: lat/lon ({lat}, {lon}) out of range")
                coords.append((lat, lon))
    if not paths:
        raise GeokitError(f"{path}: no rows after the header")
    latlon = np.asarray(coords, dtype=np.float64) if has_gps else np.full((len(paths), 2), np.nan)
    return References(paths, latlon, str(path))


def dataset_references(
    config_path: str | Path,
    overrides: Sequence[str] = (),
    split: str | None = None,
) -> References:
    """The reference set of a configured dataset's evaluation split (and its lat/lon if known)."""
    from geokit import config
    from geokit.registry import create

    cfg = config.load(config_path, list(overrides), require=("dataset",))
    ds = create("dataset", cfg.names["dataset"], cfg.dataset)
    ds.name = cfg.names["dataset"]
    es = ds.eval_set(ds.check_split(split or cfg.eval.split))
    gps = es.reference_gps
    latlon = (
        np.asarray(gps, dtype=np.float64).reshape(-1, 2)
        if gps is not None
        else np.full((len(es.reference_paths), 2), np.nan)
    )
    return References(list(es.reference_paths), latlon, f"{config_path} ({ds.name} {es.name})", dataset=ds)


# ------------------------------------------------------------------------------ encoders


@dataclass
class Encoder:
    """An encoder rebuilt from a checkpoint record, ready for :func:`geokit.embedding.embed_paths`."""

    module: Any
    record: dict[str, Any]
    fingerprint: str
    source: str

    def size(self, view: str) -> tuple[int, int]:
        if view not in ("query", "reference"):
            raise GeokitError(f"view must be 'query' or 'reference', not {view!r}")
        return tuple(self.record[f"{view}_size"])

    @property
    def norm(self) -> Any:
        """The query view's normalisation (see :meth:`norm_for`)."""
        return self.norm_for("query")

    def norm_for(self, view: str) -> Any:
        """The recorded normalisation of ``view`` (``mean``/``std`` lists, or per-view mappings)."""
        from geokit.data import Normalisation

        mean, std = self.record["mean"], self.record["std"]
        mean = mean[view] if isinstance(mean, dict) else mean
        std = std[view] if isinstance(std, dict) else std
        return Normalisation(tuple(mean), tuple(std))


def load_encoder(checkpoint: str | Path, device: Any = None) -> Encoder:
    """Rebuild the checkpoint's encoder from its record and load its weights strictly.

    Options that only choose initial weights are switched off (``model.without_initial_weights``),
    so rebuilding needs no network.
    """
    from geokit.checkpoint import load_module_strict, load_weights
    from geokit.model import BuildContext, build_component, without_initial_weights

    tensors, record = load_weights(checkpoint)
    missing = [
        k for k in ("encoder", "embedding_dim", "mean", "std", "query_size", "reference_size") if k not in record
    ]
    if missing:
        raise GeokitError(
            f"{checkpoint}: the checkpoint record lacks {', '.join(missing)}; it was not written by 'geokit train'"
        )
    options = dict(record["encoder"])
    name = options.pop("name", None)
    if not name:
        raise GeokitError(f"{checkpoint}: the record's encoder has no name")
    context = BuildContext(
        "encoder",
        dataset_name=str(record.get("dataset", "dataset")),
        query_size=tuple(record["query_size"]),
        reference_size=tuple(record["reference_size"]),
    )
    module = build_component("encoder", name, without_initial_weights(options), context)
    enc = {k[len("encoder.") :]: v for k, v in tensors.items() if k.startswith("encoder.")}
    load_module_strict(module, enc, f"{checkpoint} (encoder)")
    if device is not None:
        module.to(device)
    module.eval()
    from geokit.images import apply_record

    apply_record(record, str(checkpoint))  # decode images as the encoder was trained to see them
    return Encoder(module, record, fingerprint(enc), str(checkpoint))


def encoder_meta(encoder: Encoder) -> dict[str, Any]:
    """What an index stores about the encoder that embedded it."""
    return {
        "encoder_record": {k: encoder.record.get(k) for k in RECORD_KEYS},
        "encoder_fingerprint": encoder.fingerprint,
        "checkpoint": str(Path(encoder.source).resolve()),
        "view": "reference",
    }


def _run_rerankers(enc: Encoder, spec: IndexSpec) -> list[dict[str, Any]]:
    """The ``rerankers`` of the checkpoint's run config, checked before anything is embedded:
    ``locate`` applies them against the gallery's vectors, which only a flat index keeps."""
    from geokit.evaluation import build_rerankers

    config = enc.record.get("config")
    sections = list((config.get("rerankers") if isinstance(config, dict) else None) or [])
    if sections:
        build_rerankers(sections)  # an unknown re-ranker or option fails now, not after embedding
        if spec.type != "flat":
            raise GeokitError(
                f"{enc.source} was trained with re-rankers "
                f"({', '.join(str(s.get('name')) for s in sections)}), which need the gallery's "
                "vectors at locate time: build this index with --type flat"
            )
    return sections


def build_from_checkpoint(
    checkpoint: str | Path,
    references: References,
    output: str | Path,
    spec: IndexSpec,
    *,
    batch_size: int = 64,
    chunk: int = 1024,
    device: str = "auto",
    show: bool | None = None,
    load: bool = True,
    dist_timeout: float = 1800.0,
) -> GeoIndex | dict[str, Any] | None:
    """``geokit index build``: embed ``references`` with the checkpoint's encoder (reference view)
    and save the index at ``output``.

    The embeddings stream to a spool file next to ``output`` (``chunk`` images at a time), then
    the index file is written from it (:func:`write_index_from_spool` states the memory ceiling),
    so galleries larger than memory can be indexed. Under torchrun every rank embeds its share
    of each chunk and rank 0 writes; a rank that dies or hangs makes the others fail after
    ``dist_timeout`` seconds. Returns the loaded index (``load``) or its metadata on rank 0,
    ``None`` on the other ranks."""
    import os
    import tempfile

    from geokit import distributed as D
    from geokit.data import CrossViewDataset

    world, dev = D.setup(device, dist_timeout)
    clean = False
    output = Path(output)
    spool_path: Path | None = None
    try:
        enc = load_encoder(checkpoint, dev)
        rerankers = _run_rerankers(enc, spec)
        dataset = references.dataset or CrossViewDataset()
        size = enc.size("reference")
        dim = int(enc.record["embedding_dim"])
        n = len(references.paths)
        spec.check(n, dim)
        if n == 0:
            raise GeokitError("no references to index")

        def embed(positions: np.ndarray) -> np.ndarray:
            return D.embed_sharded(
                world,
                enc.module,
                dataset,
                [references.paths[int(i)] for i in positions],
                size,
                enc.norm_for("reference"),
                batch_size=batch_size,
                device=dev,
                show=False,
                view="reference",
            )

        if world.is_main:
            output.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".spool", dir=output.parent)
            os.close(fd)
            spool_path = Path(tmp)
        dtype = np.float16 if spec.type == "flat" and spec.dtype == "float16" else np.float32
        spool = spool_embeddings(
            embed,
            n,
            dim,
            spool_path or os.devnull,
            dtype=dtype,
            chunk=chunk,
            write=world.is_main,
            show=show if world.is_main else False,
        )
        clean = True
    except GeokitError:
        raise
    except Exception as exc:
        if world.distributed and D.is_comm_error(exc):
            raise D.comm_error(
                world, "distributed index building", exc, "Re-run the command.", "--dist-timeout"
            ) from None
        raise
    finally:
        # Every rank has embedded its share: leave the process group before rank 0 builds the
        # index alone (however long that takes, nobody waits on a collective for it).
        D.teardown(world, clean=clean)
        if not clean and spool_path is not None:
            spool_path.unlink(missing_ok=True)
    if not world.is_main:
        return None
    try:
        meta = {**encoder_meta(enc), "references": references.source}
        if rerankers:
            meta["rerankers"] = rerankers
        info = write_index_from_spool(
            spool,
            spec,
            output,
            paths=references.paths,
            latlon=references.latlon,
            meta=meta,
            chunk=max(chunk, 65536),
            show=show,
        )
    finally:
        spool.path.unlink(missing_ok=True)
    if not load:
        return info
    index = GeoIndex.load(output)
    return index
