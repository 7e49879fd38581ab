"""Building indexes: in memory (:func:`build_index`) and from a checkpoint (:func:`build_from_checkpoint`).

Building streams. :func:`build_index` (in memory) embeds ``chunk`` references at a time and adds
them to the index, so memory is the index itself plus one chunk (``ivf``/``ivfpq`` first embed a
training sample, kept for reuse, of at most ``train_size`` vectors). ``geokit index build``
(:func:`build_from_checkpoint`) goes further for galleries larger than memory: the embeddings
stream to a spool file on disk (under torchrun every rank embeds its share of each chunk and
rank 0 writes), then :func:`write_index_from_spool` writes the same file from it, reading the
spool piece by piece (a flat index never sits in memory; a faiss index is trained on a sample).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geokit.checkpoint import Encoder, encoder_meta, load_encoder
from geokit.errors import GeokitError
from geokit.retrieval._index_file import GeoIndex, new_meta
from geokit.retrieval._references import References
from geokit.retrieval._spec import IndexSpec, new_faiss_index
from geokit.retrieval._spool import spool_embeddings, write_index_from_spool


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

    info = new_meta(spec, n, dim, meta)
    starts = range(0, n, chunk)
    if spec.type == "flat":
        vectors = np.empty((n, dim), dtype=spec.vector_dtype())
        for s in progress(starts, total=len(starts), desc="index: embed", enabled=show):
            vectors[s : s + chunk] = embed(np.arange(s, min(s + chunk, n)))
        info["params"] = {"dtype": spec.dtype}
        return GeoIndex(info, list(paths), latlon, vectors=vectors)

    cache: dict[int, np.ndarray] = {}
    index, params = new_faiss_index(spec, n, dim)
    if spec.type != "hnsw":
        sample = spec.train_sample(n, dim)
        n_train = len(sample)
        train = np.empty((n_train, dim), dtype=spec.vector_dtype())
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
        block = np.empty((len(pos), dim), dtype=spec.vector_dtype())
        if len(todo):
            block[np.searchsorted(pos, todo)] = embed(todo)
        for i, p in enumerate(pos):
            if int(p) in cache:
                block[i] = cache.pop(int(p))
        index.add(block)
    info["params"] = params
    return GeoIndex(info, list(paths), latlon, faiss_index=index)


def _run_rerankers(enc: Encoder, spec: IndexSpec) -> list[dict[str, Any]]:
    """The ``rerankers`` of the checkpoint's run config, checked before anything is embedded:
    ``locate`` applies them against the gallery's vectors, which only a flat index keeps."""
    from geokit.engine.evaluation import build_rerankers

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
        spool = spool_embeddings(
            embed,
            n,
            dim,
            spool_path or os.devnull,
            dtype=spec.vector_dtype(),
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
