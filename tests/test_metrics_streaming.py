"""Streaming metrics (``geokit.metrics``) equal a brute-force dense numpy computation of the
definitions, on random cases with many exact ties, chunk sizes that do not divide Q,
multi-positive AP and VIGOR hit rates; with and without the bfloat16 screen (which must give the
same metrics: it re-scores in float32 whatever it cannot decide)."""

from __future__ import annotations

import numpy as np
import pytest

from geokit.metrics import retrieval_metrics

SCREEN = pytest.mark.parametrize("screen", [False, True], ids=["fp32", "bf16screen"])


def exact_unit_vectors(rng: np.random.Generator, n: int, dim: int = 16) -> np.ndarray:
    """Unit vectors with 4 entries of ±0.5: dot products are exact multiples of 0.25, so
    exact ties are frequent and every implementation computes the same scores."""
    x = np.zeros((n, dim), dtype=np.float32)
    for i in range(n):
        cols = rng.choice(dim, 4, replace=False)
        x[i, cols] = rng.choice([-0.5, 0.5], 4)
    return x


def dense_metrics(q, r, positives, semi=None, ks=(1, 5, 10), want_ap=False):
    """The definitions, applied query by query to the full score matrix (float64)."""
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    r = r / np.linalg.norm(r, axis=1, keepdims=True)
    sim = q.astype(np.float64) @ r.astype(np.float64).T
    n_q, n_r = sim.shape
    ranks, aps, hits, strict = [], [], [], []
    for i in range(n_q):
        pos = np.unique(np.atleast_1d(positives[i]))
        pos = pos[pos >= 0]
        is_pos = np.zeros(n_r, bool)
        is_pos[pos] = True
        best = sim[i, pos].max()
        ranks.append(int(np.sum((sim[i] > best) & ~is_pos)))
        if semi is not None:
            ok = is_pos.copy()
            sp = np.asarray(semi[i])
            ok[sp[sp >= 0]] = True
            hits.append(sim[i, ok].max() >= sim[i, ~ok].max() if (~ok).any() else True)
            strict.append(not np.any((sim[i] > best) & ~ok))
        if want_ap:
            ps = np.sort(sim[i, pos])[::-1]
            total = 0.0
            for j, v in enumerate(ps):
                position = int(np.sum((sim[i] > v) & ~is_pos)) + j
                prec = (j + 1) / (position + 1)
                old = j / position if position > 0 else 1.0
                total += (old + prec) / 2 / len(pos)
            aps.append(total)
    ranks = np.asarray(ranks)
    out = {f"R@{k}": 100 * np.mean(ranks < k) for k in ks}
    out["R@1%"] = 100 * np.mean(ranks < max(1, n_r // 100))
    if semi is not None:
        out["hit_rate"] = 100 * np.mean(hits)
        out["hit_rate_strict"] = 100 * np.mean(strict)
    if want_ap:
        out["AP"] = 100 * np.mean(aps)
    out["queries"], out["references"] = n_q, n_r
    return out


def assert_same(a, b):
    assert set(a) == set(b), (sorted(a), sorted(b))
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=1e-9), (key, a[key], b[key])


@SCREEN
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("chunk", [1, 7, 64, None])
def test_single_positive_with_ties_equals_dense(seed, chunk, screen):
    rng = np.random.default_rng(seed)
    n_q, n_r = 53, 230 + 17 * seed
    r = exact_unit_vectors(rng, n_r)
    pos = rng.integers(0, n_r, n_q)
    q = r[pos].copy()
    noisy = rng.random(n_q) < 0.6  # many queries match something else as well as or better
    q[noisy] = exact_unit_vectors(rng, int(noisy.sum()))
    got = retrieval_metrics(q, r, pos, ks=(1, 2, 5, 10), chunk_size=chunk, bf16_screen=screen)
    assert_same(got, dense_metrics(q, r, pos, ks=(1, 2, 5, 10)))


@SCREEN
@pytest.mark.parametrize("chunk", [3, 10, None])
def test_gaussian_float64_inputs_equal_dense(chunk, screen):
    rng = np.random.default_rng(11)
    r = rng.normal(size=(300, 24))
    pos = rng.integers(0, 300, 41)
    q = r[pos] + 1.2 * rng.normal(size=(41, 24))
    got = retrieval_metrics(q, r, pos, chunk_size=chunk, bf16_screen=screen)
    assert_same(got, dense_metrics(q, r, pos))


@SCREEN
def test_crowded_gallery_equals_dense(screen):
    """Low dimension, big gallery: hundreds of references within the screen's margin of each
    query's true match, so the screen re-scores whole rows in float32 (its fallback)."""
    rng = np.random.default_rng(12)
    r = rng.normal(size=(6000, 6)).astype(np.float32)
    pos = rng.integers(0, 6000, 60)
    q = r[pos] + 0.8 * rng.normal(size=(60, 6)).astype(np.float32)
    got = retrieval_metrics(q, r, pos, ks=(1, 5, 10, 100), chunk_size=16, bf16_screen=screen)
    assert_same(got, dense_metrics(q, r, pos, ks=(1, 5, 10, 100)))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("chunk", [4, 9, None])
def test_multi_positive_ap_equals_dense(seed, chunk):
    rng = np.random.default_rng(100 + seed)
    n_q, n_r = 37, 150
    r = exact_unit_vectors(rng, n_r)
    positives = [rng.choice(n_r, rng.integers(1, 8), replace=False) for _ in range(n_q)]
    q = exact_unit_vectors(rng, n_q)
    for i in range(0, n_q, 2):  # half the queries equal one of their true references
        q[i] = r[positives[i][0]]
    got = retrieval_metrics(q, r, positives, chunk_size=chunk)
    assert "AP" in got
    assert_same(got, dense_metrics(q, r, positives, want_ap=True))


@SCREEN
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("chunk", [5, 16, None])
def test_vigor_hit_rates_equal_dense(seed, chunk, screen):
    rng = np.random.default_rng(200 + seed)
    n_q, n_r = 45, 120
    r = exact_unit_vectors(rng, n_r)
    pos = rng.integers(0, n_r, n_q)
    semi = rng.integers(-1, n_r, (n_q, 3))
    semi[::5, 0] = pos[::5]  # a semi-positive that is the positive itself
    semi[1::5, 1] = semi[1::5, 0]  # duplicates
    q = exact_unit_vectors(rng, n_q)
    q[::3] = r[semi[::3, 2].clip(0)]  # top-1 is often a semi-positive
    got = retrieval_metrics(q, r, pos, semi_positives=semi, chunk_size=chunk, bf16_screen=screen)
    want = dense_metrics(q, r, pos, semi=semi)
    assert_same(got, want)
    assert got["hit_rate"] >= got["hit_rate_strict"] - 1e-9


def test_forced_ap_on_single_positive_and_torch_float16_inputs():
    import torch

    rng = np.random.default_rng(5)
    r = exact_unit_vectors(rng, 90)
    pos = rng.integers(0, 90, 30)
    q = exact_unit_vectors(rng, 30)  # ±0.5 entries are exact in float16
    got = retrieval_metrics(
        torch.from_numpy(q).half(), r.astype(np.float16), torch.from_numpy(pos), ap=True, chunk_size=7
    )
    assert_same(got, dense_metrics(q, r, pos, want_ap=True))


def test_small_gallery_r1pct_uses_k_at_least_one():
    rng = np.random.default_rng(0)
    r = exact_unit_vectors(rng, 20)
    q = r.copy()
    got = retrieval_metrics(q, r, np.arange(20))
    assert got["R@1%"] == got["R@1"]


def test_bad_positives_are_refused():
    r = np.eye(4, dtype=np.float32)
    with pytest.raises(ValueError, match="rows"):
        retrieval_metrics(r, r, [0, 1])
    with pytest.raises(ValueError, match="valid reference"):
        retrieval_metrics(r, r, [0, 1, 2, 4])
    with pytest.raises(ValueError, match="dim"):
        retrieval_metrics(np.ones((2, 3)), r, [0, 1])


@pytest.mark.parametrize("budget", [4_000_000, 50], ids=["one-pass", "second-pass"])
@pytest.mark.parametrize("fallback", [0, 3, 10**9], ids=["all-rows-fp32", "mixed", "pairs-only"])
@pytest.mark.parametrize("above_t", [False, True], ids=["theta=t", "theta>t"])
def test_screened_count_equals_float32_count(fallback, above_t, budget, monkeypatch):
    """The screen's count of references above a threshold, through each of its paths (decided by
    the bf16 block, re-scored pairs, re-scored rows), equals the float32 count; and the bf16
    block's actual error stays inside the bound the screen assumes (this checks the matrix-multiply
    backend too: one that rounded partial sums to bfloat16 would fail here)."""
    import torch

    from geokit.retrieval import _screening as screening
    from geokit.retrieval import as_matrix, exact_dots
    from geokit.retrieval._screening import ScreenedGallery, U

    monkeypatch.setattr(screening, "PAIR_BUDGET", budget)  # small: too many candidates for one pass
    rng = np.random.default_rng(5)
    r = as_matrix(rng.normal(size=(3000, 48)))
    q = as_matrix(r[:40].numpy() + 0.3 * rng.normal(size=(40, 48)))
    g = ScreenedGallery(r)
    rows = torch.arange(40)
    t = exact_dots(q, r, rows, rows)  # query i's true match is reference i
    s16, err = g.shifted_scores(q, t)
    exact64 = q.double() @ r.double().t() - t.double().unsqueeze(1)
    slack = (s16.double() - exact64).abs() - U / (1 - U) * s16.double().abs()
    assert bool((slack <= err.unsqueeze(1)).all())
    theta = t + (0.05 if above_t else 0.0)
    cols = rows.unsqueeze(1)
    got = g.count_above(q, s16, t, err, theta, cols, fallback)
    # the float32 truth in the re-scoring arithmetic, pair by pair
    all_r = rows.repeat_interleave(3000)
    all_c = torch.arange(3000).repeat(40)
    dots = exact_dots(q, r, all_r, all_c).reshape(40, 3000)
    dots[rows, rows] = float("-inf")
    want = (dots > theta.unsqueeze(1)).sum(1)
    if fallback == 0:  # every undecided row is re-scored by a float32 matrix multiply
        mm = q @ r.t()
        mm[rows, rows] = float("-inf")
        want = (mm > theta.unsqueeze(1)).sum(1)
    assert torch.equal(got, want)
