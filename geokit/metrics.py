"""Retrieval metrics computed block by block (``geokit.retrieval.score_blocks``).

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
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from geokit.retrieval import as_matrix, score_blocks


def _pad(lists: Sequence[Sequence[int]] | np.ndarray, fill: int = -1) -> np.ndarray:
    if isinstance(lists, np.ndarray) and lists.ndim == 2:
        return lists.astype(np.int64)
    width = max((len(x) for x in lists), default=0)
    out = np.full((len(lists), max(width, 1)), fill, dtype=np.int64)
    for i, x in enumerate(lists):
        out[i, :len(x)] = np.asarray(x, dtype=np.int64)
    return out


def retrieval_metrics(query: Any, reference: Any, positives: Any, *, semi_positives: Any = None,
                      ks: Sequence[int] = (1, 5, 10), chunk_size: int | None = None,
                      ap: bool | None = None) -> dict[str, float]:
    """Recall@k, R@1%, and (when applicable) VIGOR hit rates and AP, without the Q×R matrix.

    :param query: ``(Q, D)`` embeddings (numpy or torch; L2-normalised here).
    :param reference: ``(R, D)`` embeddings.
    :param positives: one reference index per query, or a list of index lists (several true
        references per query; ``AP`` is then reported).
    :param semi_positives: ``(Q, S)`` reference indices, −1 padded (or lists); adds ``hit_rate``
        and ``hit_rate_strict``.
    :param ap: force ``AP`` on or off (default: on exactly when ``positives`` is a list of lists).
    """
    import torch

    q = as_matrix(query)
    r = as_matrix(reference)
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
    if ((pos >= n_r) | (pos < -1)).any() or (pos[:, 0] < 0).any():
        raise ValueError("positives must hold at least one valid reference index per query")
    want_ap = multi if ap is None else ap
    semi = None if semi_positives is None else _pad(semi_positives)
    if semi is not None and len(semi) != n_q:
        raise ValueError(f"semi_positives has {len(semi)} rows for {n_q} queries")

    k_pct = max(1, n_r // 100)
    ranks = np.empty(n_q, dtype=np.int64)
    aps = np.empty(n_q, dtype=np.float64) if want_ap else None
    hits = np.empty(n_q, dtype=bool) if semi is not None else None
    hits_strict = np.empty(n_q, dtype=bool) if semi is not None else None
    pos_t = torch.from_numpy(pos)
    semi_t = None if semi is None else torch.from_numpy(semi)

    for start, s in score_blocks(q, r, chunk_size):
        b = len(s)
        rows = torch.arange(b).unsqueeze(1)
        p = pos_t[start:start + b]
        valid = p >= 0
        pmask = torch.zeros_like(s, dtype=torch.bool)
        pmask[rows.expand_as(p)[valid], p[valid]] = True
        pscores = torch.where(valid, s[rows, p.clamp(min=0)], torch.tensor(float("-inf")))
        best_pos = pscores.max(dim=1).values
        above = (s > best_pos.unsqueeze(1)) & ~pmask
        ranks[start:start + b] = above.sum(1).numpy()

        if aps is not None:
            neg_sorted = s.masked_fill(pmask, float("-inf")).sort(dim=1).values
            ps_sorted = pscores.sort(dim=1, descending=True).values  # -inf padding goes last
            n_above = n_r - torch.searchsorted(neg_sorted, ps_sorted.contiguous(), right=True)
            n_good = valid.sum(1, keepdim=True).double()
            j = torch.arange(ps_sorted.shape[1], dtype=torch.float64).unsqueeze(0)
            position = n_above.double() + j  # 0-based place in the ranking
            precision = (j + 1) / (position + 1)
            old_precision = torch.where(position > 0, j / position.clamp(min=1), torch.ones_like(j))
            contrib = ((old_precision + precision) / 2) / n_good
            contrib = torch.where(j < n_good, contrib, torch.zeros_like(contrib))
            aps[start:start + b] = contrib.sum(1).numpy()

        if semi_t is not None:
            sp = semi_t[start:start + b]
            svalid = sp >= 0
            smask = pmask.clone()
            smask[rows.expand_as(sp)[svalid], sp[svalid]] = True
            best_ok = s.masked_fill(~smask, float("-inf")).max(dim=1).values
            best_other = s.masked_fill(smask, float("-inf")).max(dim=1).values
            hits[start:start + b] = (best_ok >= best_other).numpy()
            hits_strict[start:start + b] = (~((s > best_pos.unsqueeze(1)) & ~smask).any(1)).numpy()

    out: dict[str, float] = {}
    for k in ks:
        out[f"R@{k}"] = float(100.0 * np.mean(ranks < k)) if n_q else 0.0
    out["R@1%"] = float(100.0 * np.mean(ranks < k_pct)) if n_q else 0.0
    if hits is not None:
        out["hit_rate"] = float(100.0 * hits.mean())
        out["hit_rate_strict"] = float(100.0 * hits_strict.mean())
    if aps is not None:
        out["AP"] = float(100.0 * aps.mean())
    out["queries"] = n_q
    out["references"] = n_r
    return out
