"""The streamed index build (spool on disk, then the index file written from it) gives the file
the in-memory build saves, for every index type, and a flat index never sits in memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from geokit.errors import GeokitError
from geokit.index import GeoIndex, IndexSpec, build_index, spool_embeddings, write_index_from_spool


def clustered(n=2000, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, dim))
    x = centres[rng.integers(0, 40, n)] + 0.3 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _tensors(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - a safetensors handle


@pytest.mark.parametrize(
    "spec",
    [
        IndexSpec("flat"),
        IndexSpec("flat", dtype="float16"),
        IndexSpec("ivf", nlist=16, nprobe=4),
        IndexSpec("ivfpq", nlist=16, m=8, nprobe=4),
        IndexSpec("hnsw", hnsw_m=8),
    ],
    ids=lambda s: f"{s.type}-{s.dtype}",
)
def test_streamed_file_equals_the_in_memory_build(tmp_path, spec):
    x = clustered()
    n, dim = x.shape
    paths = [f"t/{i}.png" for i in range(n)]
    latlon = np.c_[np.linspace(40, 41, n), np.linspace(10, 11, n)]
    ref = build_index(lambda p: x[p], n, dim, spec, paths=paths, latlon=latlon, meta={"note": "x"}, chunk=300)
    ref.save(tmp_path / "mem.index")
    calls = []

    def embed(pos):
        calls.append(len(pos))
        return x[pos]

    spool = spool_embeddings(embed, n, dim, tmp_path / "s.spool", dtype=spec.vector_dtype(), chunk=300)
    assert calls == [300] * 6 + [200]
    assert (tmp_path / "s.spool").stat().st_size == n * dim * np.dtype(spool.dtype).itemsize
    info = write_index_from_spool(
        spool, spec, tmp_path / "disk.index", paths=paths, latlon=latlon, meta={"note": "x"}, chunk=300
    )
    assert info["count"] == n and info["type"] == spec.type
    a, b = GeoIndex.load(tmp_path / "mem.index"), GeoIndex.load(tmp_path / "disk.index")
    assert b.paths == a.paths and b.meta["note"] == "x"
    np.testing.assert_array_equal(b.latlon, a.latlon)
    assert {k: v for k, v in b.meta.items() if k != "created"} == {k: v for k, v in a.meta.items() if k != "created"}
    ta, tb = _tensors(tmp_path / "mem.index"), _tensors(tmp_path / "disk.index")
    assert sorted(ta) == sorted(tb)
    q = x[:100] + 0.05 * np.random.default_rng(1).normal(size=(100, dim)).astype(np.float32)
    if spec.type == "hnsw":  # faiss inserts a batch in parallel: the graph may differ, not its answers
        assert np.mean(b.search(q, 1)[1][:, 0] == a.search(q, 1)[1][:, 0]) > 0.95
    else:  # byte for byte the same vectors / the same trained and filled faiss index
        for k in ta:
            np.testing.assert_array_equal(tb[k], ta[k], err_msg=k)
        np.testing.assert_array_equal(b.search(q, 5)[1], a.search(q, 5)[1])


def test_a_flat_index_is_written_without_holding_the_vectors(tmp_path):
    n, dim = 40000, 128  # 20 MiB of float32 vectors
    rng = np.random.default_rng(0)

    def embed(pos):
        x = rng.normal(size=(len(pos), dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    paths = [f"{i}" for i in range(n)]
    latlon = np.zeros((n, 2))
    tracemalloc.start()
    try:
        spool = spool_embeddings(embed, n, dim, tmp_path / "s.spool", chunk=1000)
        write_index_from_spool(spool, IndexSpec("flat"), tmp_path / "x.index", paths=paths, latlon=latlon)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < n * dim * 4 // 2, peak  # a chunk, the paths, lat/lon, one 4 MiB copy block
    back = GeoIndex.load(tmp_path / "x.index")
    np.testing.assert_array_equal(back.vectors, np.fromfile(tmp_path / "s.spool", dtype=np.float32).reshape(n, dim))


def test_spool_errors_are_clear(tmp_path):
    x = clustered(50)
    with pytest.raises(GeokitError, match="shape"):
        spool_embeddings(lambda p: x[p][:, :3], 50, 32, tmp_path / "s", chunk=20)
    spool = spool_embeddings(lambda p: x[p], 50, 32, tmp_path / "s", chunk=20)
    with pytest.raises(GeokitError, match="fewer than nlist"):
        write_index_from_spool(
            spool, IndexSpec("ivf", nlist=64), tmp_path / "i", paths=["a"] * 50, latlon=np.zeros((50, 2))
        )
    with pytest.raises(GeokitError, match="50 embeddings but 3 paths"):
        write_index_from_spool(spool, IndexSpec("flat"), tmp_path / "i", paths=["a"] * 3, latlon=np.zeros((3, 2)))
    assert not (tmp_path / "i").exists()
