"""Exact top-k (``geokit.retrieval.search``) equals a dense argsort, ties by lower index."""

from __future__ import annotations

import numpy as np
import pytest

from geokit.retrieval import score_blocks, search


def dense_topk(q, r, k):
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    r = r / np.linalg.norm(r, axis=1, keepdims=True)
    sim = q.astype(np.float64) @ r.astype(np.float64).T
    idx = np.stack([np.lexsort((np.arange(sim.shape[1]), -row))[:k] for row in sim])
    return np.take_along_axis(sim, idx, 1), idx


def tie_heavy(rng, n, dim=8):
    x = np.zeros((n, dim), dtype=np.float32)
    for i in range(n):
        x[i, rng.choice(dim, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    return x


@pytest.mark.parametrize("k", [1, 3, 10, 64])
@pytest.mark.parametrize("chunk", [1, 6, None])
def test_search_matches_dense_with_ties(k, chunk):
    rng = np.random.default_rng(k)
    r = tie_heavy(rng, 64)
    q = tie_heavy(rng, 23)
    s, i = search(q, r, k, chunk_size=chunk)
    ds, di = dense_topk(q, r, k)
    assert s.shape == i.shape == (23, min(k, 64))
    np.testing.assert_array_equal(i, di)
    np.testing.assert_allclose(s, ds, atol=1e-6)


def test_search_gaussian_and_threads_option():
    rng = np.random.default_rng(1)
    r = rng.normal(size=(500, 32)).astype(np.float32)
    q = rng.normal(size=(77, 32)).astype(np.float16)
    s, i = search(q, r, 5, chunk_size=13, threads=1)
    _ds, di = dense_topk(q.astype(np.float32), r, 5)
    np.testing.assert_array_equal(i, di)
    assert (np.diff(s, axis=1) <= 0).all()


def test_score_blocks_cover_all_queries_with_uneven_chunks():
    rng = np.random.default_rng(2)
    q, r = rng.normal(size=(10, 4)), rng.normal(size=(6, 4))
    starts, rows = [], 0
    for start, block in score_blocks(q, r, chunk_size=4):
        starts.append(start)
        rows += len(block)
        assert block.shape[1] == 6
    assert starts == [0, 4, 8] and rows == 10


def test_empty_and_mismatched_inputs():
    r = np.eye(3, dtype=np.float32)
    s, _i = search(np.zeros((0, 3), np.float32), r, 2)
    assert s.shape == (0, 2)
    with pytest.raises(ValueError, match="dim"):
        search(np.ones((2, 4)), r, 1)


def test_package_exports_and_facade():
    # geokit.retrieval names its API in __all__ and imports each name on first use; geokit.index
    # re-exports the same objects
    import subprocess
    import sys

    import geokit.index
    import geokit.retrieval

    for name in geokit.retrieval.__all__:
        assert getattr(geokit.retrieval, name) is not None, name
    for name in ("GeoIndex", "IndexSpec", "build_index", "read_references", "write_index_from_spool"):
        assert getattr(geokit.index, name) is getattr(geokit.retrieval, name), name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        geokit.retrieval.nope  # noqa: B018
    code = "import sys; from geokit.retrieval import IndexSpec; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # the CLI reads the index defaults on every start
