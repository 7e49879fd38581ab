"""Streaming build: embeddings spooled to disk, and the index file written from the spool."""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geokit.errors import GeokitError
from geokit.retrieval._index_file import META_KEY, crc32, location_tensors, new_meta
from geokit.retrieval._spec import IndexSpec, new_faiss_index

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
    info = new_meta(spec, n, dim, meta)
    if len(paths) != n or len(latlon) != n:
        raise GeokitError(f"{n} embeddings but {len(paths)} paths and {len(latlon)} locations")
    small = location_tensors(paths, latlon)
    faiss_file: Path | None = None
    big_dtype: np.dtype
    big_shape: tuple[int, ...]
    try:
        if spec.type == "flat":
            want = spec.vector_dtype()
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
        info["checksums"] = {**{k: crc32(v) for k, v in small.items()}, big_name: big_crc}
        entries = [(k, v.dtype, v.shape, v.nbytes) for k, v in small.items()] + [
            (big_name, big_dtype, big_shape, big_bytes)
        ]
        header = _safetensors_header(entries, {META_KEY: json.dumps(info)})

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as out:
                out.write(header)
                for v in small.values():
                    out.write(v.data.cast("B"))
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
    index, params = new_faiss_index(spec, n, dim)
    if spec.type != "hnsw":
        sample = spec.train_sample(n, dim)
        n_train = len(sample)
        train = spool.take(sample)
        index.train(train)
        del train
        params["train_size"] = n_train
    starts = range(0, n, chunk)
    for s in progress(starts, total=len(starts), desc="index: add", enabled=show):
        index.add(spool.read(s, min(s + chunk, n)))
    return index, params
