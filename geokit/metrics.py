"""Retrieval metrics computed block by block on the one retrieval path (``geokit.retrieval``).

Definitions (values in percent):

- a query's *rank* is the number of references that are not true matches and score strictly
  higher than its best true match (ties count for the query);
- ``R@k``: % of queries with rank < k; ``R@1%``: the same with k = max(1, floor(R / 100));
- ``hit_rate`` (VIGOR paper): the top-1 reference is the positive or a semi-positive (ties count
  for the query); ``hit_rate_strict`` (Sample4Geo code): no reference other than the
  semi-positives scores strictly above the positive;
- ``AP`` (University-1652, Market-1501 style): per query, the trapezoid average precision over
  its true matches, where a true match's position counts the non-matches strictly above it and
  the matches ranked before it; averaged over queries.

Per block of queries the scan does one matrix multiply and, per query, scores its true matches
and semi-positives (a few columns) and counts the references above them; no true match scores
above the best one, so the count of all other references above the best true match *is* the
rank; the strict hit rate compares the semi-positives' scores with it; the VIGOR hit is "nothing
but true matches and semi-positives above the best allowed score".

Scores are those of the float32 vectors computed exactly (float64): the block decides every
reference farther from a threshold than the block's proven error bound, and the few closer ones
are re-scored (:mod:`geokit.retrieval._screening`). So the metrics do not depend on the CPU or on the
block arithmetic: float32 blocks (any CPU) and bfloat16 blocks (``bf16_screen``, the default on
CPUs with AMX, 0.5–0.9x the time of a float32 matrix multiply; BENCHMARKS.md) give the same
numbers, where a plain float32 evaluation misorders references a few 1e-8 apart.

AP counts the references above each true match in one pass over float32 blocks (bucketing every
score among the sorted true-match scores), so it costs one extra pass whatever the number of true
matches; its counts are float32's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from geokit.retrieval import as_matrix, check_query, count_above, default_chunk, exact_dots, query_blocks
from geokit.retrieval._screening import ScreenedGallery, count_above_float32, screen_available


def _pad(lists: Sequence[Sequence[int]] | np.ndarray, fill: int = -1) -> np.ndarray:
    if isinstance(lists, np.ndarray) and lists.ndim == 2:
        return lists.astype(np.int64)
    width = max((len(x) for x in lists), default=0)
    out = np.full((len(lists), max(width, 1)), fill, dtype=np.int64)
    for i, x in enumerate(lists):
        out[i, : len(x)] = np.asarray(x, dtype=np.int64)
    return out


def _clean_semi(semi: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Semi-positives without −1 padding artefacts, duplicates, or entries that are positives
    (those must not be subtracted twice from the strict count)."""
    semi = semi.copy()
    for j in range(semi.shape[1]):
        col = semi[:, j : j + 1]
        dup = (col == pos).any(1) | (col == semi[:, :j]).any(1)
        semi[dup, j] = -1
    return semi


def retrieval_metrics(
    query: Any,
    reference: Any,
    positives: Any,
    *,
    semi_positives: Any = None,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int | None = None,
    ap: bool | None = None,
    threads: int | None = None,
    bf16_screen: bool | None = None,
) -> dict[str, float]:
    """Recall@k, R@1%, and (when applicable) VIGOR hit rates and AP, without the Q×R matrix.

    :param query: ``(Q, D)`` embeddings (numpy or torch, float16/32/64; L2-normalised here).
    :param reference: ``(R, D)`` embeddings.
    :param positives: one reference index per query, or a list of index lists (several true
        references per query; ``AP`` is then reported).
    :param semi_positives: ``(Q, S)`` reference indices, −1 padded (or lists); adds ``hit_rate``
        and ``hit_rate_strict``.
    :param ap: force ``AP`` on or off (default: on exactly when ``positives`` is a list of lists).
    :param chunk_size: queries per block (default :func:`geokit.retrieval.default_chunk`).
    :param threads: torch threads for the scan (default: torch's setting).
    :param bf16_screen: score blocks in bfloat16 and re-score exactly only the references
        too close to a query's threshold to decide (same metrics; see the module docstring).
        Default: on where :func:`geokit.retrieval._screening.screen_available` (AMX CPUs); AP never.
    """
    import torch

    r = as_matrix(reference)
    q = check_query(query, r.shape[1])
    n_q, n_r = len(q), len(r)
    if isinstance(positives, torch.Tensor):
        positives = positives.numpy()
    if isinstance(positives, np.ndarray):
        multi = positives.ndim == 2
    else:
        multi = any(not np.isscalar(p) for p in positives)
    pos = _pad(positives) if multi else np.asarray(positives, dtype=np.int64).reshape(-1, 1)
    if len(pos) != n_q:
        raise ValueError(f"positives has {len(pos)} rows for {n_q} queries")
    if ((pos >= n_r) | (pos < -1)).any() or (pos.max(1, initial=-1) < 0).any():
        raise ValueError("positives must hold at least one valid reference index per query")
    want_ap = multi if ap is None else ap
    semi = None
    if semi_positives is not None:
        if isinstance(semi_positives, torch.Tensor):
            semi_positives = semi_positives.numpy()
        semi = _pad(semi_positives)
        if len(semi) != n_q:
            raise ValueError(f"semi_positives has {len(semi)} rows for {n_q} queries")
        if ((semi >= n_r) | (semi < -1)).any():
            raise ValueError(f"semi_positives holds an index outside [0, {n_r})")
        semi = _clean_semi(semi, pos)

    k_pct = max(1, n_r // 100)
    ranks = np.empty(n_q, dtype=np.int64)
    aps = np.empty(n_q, dtype=np.float64) if want_ap else None
    hits = np.empty(n_q, dtype=bool) if semi is not None else None
    hits_strict = np.empty(n_q, dtype=bool) if semi is not None else None
    pos_t = torch.from_numpy(pos)
    semi_t = None if semi is None else torch.from_numpy(semi)
    neg_inf = torch.tensor(float("-inf"))
    if not want_ap:
        screen = screen_available() if bf16_screen is None else bool(bf16_screen)
        _exact_scan(q, r, pos_t, semi_t, ranks, hits, hits_strict, chunk_size, threads, screen)
    else:  # AP: float32 scores, every one bucketed among the true matches' scores
        assert aps is not None  # want_ap
        for start, _, s in query_blocks(q, r, chunk_size, threads):
            b = len(s)
            p = pos_t[start : start + b]
            valid = p >= 0
            pscores = torch.where(valid, s.gather(1, p.clamp(min=0)), neg_inf)
            best_pos = pscores.max(dim=1, keepdim=True).values
            ranks[start : start + b] = count_above(s, best_pos).numpy()
            aps[start : start + b] = _average_precision(s, pscores, valid)

    out: dict[str, float] = {}
    for k in ks:
        out[f"R@{k}"] = float(100.0 * np.mean(ranks < k)) if n_q else 0.0
    out["R@1%"] = float(100.0 * np.mean(ranks < k_pct)) if n_q else 0.0
    if hits is not None and hits_strict is not None:
        out["hit_rate"] = float(100.0 * hits.mean()) if n_q else 0.0
        out["hit_rate_strict"] = float(100.0 * hits_strict.mean()) if n_q else 0.0
    if aps is not None:
        out["AP"] = float(100.0 * aps.mean()) if n_q else 0.0
    out["queries"] = n_q
    out["references"] = n_r
    return out


def _exact_scan(
    q: Any,
    r: Any,
    pos_t: Any,
    semi_t: Any,
    ranks: np.ndarray,
    hits: np.ndarray | None,
    hits_strict: np.ndarray | None,
    chunk_size: int | None,
    threads: int | None,
    screen: bool,
) -> None:
    """The rank (and VIGOR hit) loop, filled in place, with the counts of the vectors' float64
    scores (:mod:`geokit.retrieval._screening`): on bfloat16 blocks shifted by each query's best true-match
    score (``screen``), else on float32 blocks; the same numbers either way."""
    import torch

    n_q, n_r = len(q), len(r)
    gallery = ScreenedGallery(r) if screen else None
    fallback = max(32, n_r // 128)  # undecided refs in a row beyond which one float32 row is cheaper
    chunk = max(1, int(chunk_size or default_chunk(n_r)))
    buf = torch.empty(min(chunk, max(n_q, 1)), n_r, dtype=torch.bfloat16) if screen else None
    neg_inf = torch.tensor(float("-inf"))

    def scores_at(qb: Any, cols: Any) -> Any:
        """float64 scores of the (b, P) columns (−1: −inf), in the arithmetic of the re-scoring."""
        rows = torch.arange(len(cols)).unsqueeze(1).expand_as(cols)
        vals = exact_dots(qb, r, rows.reshape(-1), cols.clamp(min=0).reshape(-1)).reshape(cols.shape)
        return torch.where(cols >= 0, vals, neg_inf)

    for start, qb, s32 in query_blocks(q, r, chunk, threads, multiply=not screen):
        b = len(qb)
        p = pos_t[start : start + b]
        best_pos = scores_at(qb, p).max(dim=1).values
        if gallery is not None:
            assert buf is not None  # made when screening
            s16, err = gallery.shifted_scores(qb, best_pos, out=buf[:b])

        # called only within this iteration, so binding the loop's block variables late is right
        def above(rows: Any, theta: Any, exclude: Any) -> Any:
            if gallery is None:
                assert s32 is not None  # noqa: B023 - query_blocks multiplied: not screening
                return count_above_float32(qb[rows], r, s32[rows], theta, exclude)  # noqa: B023
            return gallery.count_above(qb[rows], s16[rows], best_pos[rows], err[rows], theta, exclude, fallback)  # noqa: B023

        every = slice(None)
        rank = above(every, best_pos, p)
        ranks[start : start + b] = rank.numpy()
        if semi_t is None:
            continue
        assert hits is not None and hits_strict is not None  # made with semi_t
        sp = semi_t[start : start + b]
        sscores = scores_at(qb, sp)
        strict = rank == (sscores > best_pos.unsqueeze(1)).sum(1)
        hits_strict[start : start + b] = strict.numpy()
        # a strict hit is a hit; otherwise a hit means that nothing but true matches and
        # semi-positives scores above the best allowed score
        hit = strict.clone()
        rest = torch.nonzero(~strict).squeeze(1)
        if len(rest):
            best_ok = torch.maximum(best_pos[rest], sscores[rest].max(dim=1).values)
            hit[rest] = above(rest, best_ok, torch.cat([p[rest], sp[rest]], dim=1)) == 0
        hits[start : start + b] = hit.numpy()


def _average_precision(s: Any, pscores: Any, valid: Any) -> np.ndarray:
    """Market-1501 trapezoid AP for a block: ``s`` (b, R) scores, ``pscores`` (b, P) true-match
    scores (−inf where ``valid`` is false)."""
    import torch

    b, n_p = pscores.shape
    asc = pscores.sort(dim=1).values.contiguous()  # -inf padding first
    # bucket[i, j] = number of true-match scores strictly below s[i, j]; a reference is strictly
    # above the m-th smallest true-match score exactly when its bucket exceeds m.
    bucket = torch.searchsorted(asc, s, right=False)
    hist = torch.zeros(b, n_p + 1, dtype=torch.int64)
    hist.scatter_add_(1, bucket, torch.ones_like(bucket))
    all_above = hist.flip(1).cumsum(1).flip(1)[:, 1:]  # (b, P): references > asc[:, m]
    pos_above = (asc.unsqueeze(1) > asc.unsqueeze(2)).sum(2)  # true matches > asc[:, m]
    neg_above = (all_above - pos_above).flip(1).double()  # best true match first
    n_good = valid.sum(1, keepdim=True).double()
    j = torch.arange(n_p, dtype=torch.float64).unsqueeze(0)  # true matches ranked before
    position = neg_above + j  # 0-based place in the ranking
    precision = (j + 1) / (position + 1)
    old_precision = torch.where(position > 0, j / position.clamp(min=1), torch.ones_like(j))
    contrib = torch.where(j < n_good, ((old_precision + precision) / 2) / n_good, torch.zeros_like(j))
    return contrib.sum(1).numpy()
