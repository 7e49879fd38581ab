"""The one retrieval path: queries in blocks against the gallery, never the dense Q×R matrix.

Evaluation metrics (:func:`geokit.metrics.retrieval_metrics`), similarity mining (DSS calls
:func:`search`) and ``geokit locate`` on an exact index all walk :func:`score_blocks`: a block of
``chunk`` queries is scored against every reference with one matrix multiply (cosine similarity
of L2-normalised float32 vectors) into a reused buffer, consumed, and overwritten by the next.
Memory is the float32 gallery (R × D), one chunk × R block, and what the consumer keeps per query
(Q × k for top-k), whatever Q is. Queries are normalised block by block, so they are never copied
whole, and may be stored as float16 (``numpy.memmap`` works).

On CPUs with AMX the metrics walk the same blocks in bfloat16 (:mod:`geokit.retrieval._screening`): a
cheaper multiply decides what a proven error bound allows and :func:`exact_dots` re-scores the
rest, so their counts are exact (float64) rather than float32's. The pieces here —
:func:`count_above` (tiled compare-and-count) and :func:`exact_dots` — serve both.

Why torch matmul blocks and not faiss ``IndexFlatIP``: the metrics need, per query, the count of
references scoring strictly above its true match (and, for AP, above each of its true matches),
which faiss's search does not return; computing them needs the score block anyway. For a plain
top-k faiss is a little faster on this machine (20k × 40k × 1024, top-10: faiss 5.8 s, these
blocks 6.5 s; BENCHMARKS.md, "Retrieval, indexes and locate"), but two exact paths would disagree on
ties and near-ties between evaluation, mining and locate, so there is one path: this one. faiss is
used for the approximate indexes (:class:`geokit.retrieval.GeoIndex`).

Ties: :func:`search` breaks equal scores by the lower reference index, also at the k-th place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np

if TYPE_CHECKING:
    import torch

# One float32 score block (plus a bool block a quarter its size for the metrics' counts). Big
# enough that the block matmul runs near the CPU's peak: at 4096 x 40k x 1024 on the 2-core
# machine, blocks of 64 / 209 / 1024 / 2048 queries took 2.06 / 1.82 / 1.56 / 1.95x the matmul
# limit (benchmarks/retrieval_chunks.py); 160 MiB gives ~1000 queries at R = 40k, ~460 at 90k.
BLOCK_BYTES = 160 * 2**20


def as_matrix(x: Any, *, normalise: bool = True) -> torch.Tensor:
    """numpy array or tensor (any float dtype) -> contiguous float32 CPU tensor, rows L2-normalised."""
    import torch

    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    t = t.detach().to("cpu", torch.float32)
    if t.ndim != 2:
        raise ValueError(f"expected a 2-D (n, dim) array of embeddings, got shape {tuple(t.shape)}")
    if normalise:
        t = torch.nn.functional.normalize(t, dim=1)
    return t.contiguous()


def default_chunk(n_references: int) -> int:
    """Queries per block so that a float32 block stays near :data:`BLOCK_BYTES`."""
    return int(np.clip(BLOCK_BYTES // (4 * max(n_references, 1)), 16, 4096))


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch threads (None: leave torch's setting alone)."""
    import torch

    if not threads:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _rows(x: Any, start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop`` as a normalised float32 tensor (a copy only of those rows)."""
    import torch

    part = x[start:stop]
    t = part if isinstance(part, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(part))
    return torch.nn.functional.normalize(t.detach().to("cpu", torch.float32), dim=1)


def check_query(query: Any, dim: int) -> Any:
    import torch

    if not isinstance(query, torch.Tensor):
        query = np.asarray(query) if not isinstance(query, np.ndarray) else query
    if query.ndim != 2:
        raise ValueError(f"expected a 2-D (n, dim) array of query embeddings, got shape {tuple(query.shape)}")
    if query.shape[1] != dim:
        raise ValueError(f"query dim {query.shape[1]} != reference dim {dim}")
    return query


def score_blocks(
    query: Any, reference: Any, chunk_size: int | None = None, *, threads: int | None = None
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, scores)`` where ``scores[i, j]`` is the cosine similarity of query
    ``start + i`` and reference ``j``. Inputs may be numpy arrays (float16/32/64, memmaps) or
    tensors.

    ``scores`` is a view of one reused buffer: it is overwritten when the next block is made, so
    copy what you keep. ``threads`` sets torch's threads for the scan (default: torch's).
    """
    r = as_matrix(reference)
    for start, _, block in query_blocks(check_query(query, r.shape[1]), r, chunk_size, threads):
        yield start, block


@overload
def query_blocks(
    q: Any, r: torch.Tensor, chunk_size: int | None, threads: int | None, *, multiply: Literal[True] = ...
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]: ...
@overload
def query_blocks(
    q: Any, r: torch.Tensor, chunk_size: int | None, threads: int | None, *, multiply: bool
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]: ...
def query_blocks(
    q: Any, r: torch.Tensor, chunk_size: int | None, threads: int | None, *, multiply: bool = True
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
    """Yield ``(start, query_rows, scores)`` for a checked query and a normalised float32 gallery;
    ``query_rows`` are the block's normalised float32 queries. ``multiply=False``: scores None
    (the caller scores the block itself, e.g. the bfloat16 screen)."""
    import torch

    n_q = len(q)
    chunk = max(1, int(chunk_size or default_chunk(len(r))))
    buf = torch.empty(min(chunk, max(n_q, 1)), len(r), dtype=torch.float32) if multiply else None
    rt = r.t()  # BLAS reads the transposed view directly: no copy
    with torch_threads(threads), torch.inference_mode():
        for start in range(0, n_q, chunk):
            qb = _rows(q, start, start + chunk)
            out = None
            if buf is not None:
                out = buf[: len(qb)]
                torch.mm(qb, rt, out=out)
            yield start, qb, out


def search(
    query: Any, reference: Any, k: int, *, chunk_size: int | None = None, threads: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` references per query: ``(scores, indices)``, each ``(Q, k)``, best first.

    Ties are broken by the lower reference index (also across the k-th place), so results are
    deterministic. Memory: the gallery, one block and the ``Q × k`` result.
    """
    import torch

    r = as_matrix(reference)
    q = check_query(query, r.shape[1])
    n_r = len(r)
    k = max(0, min(int(k), n_r))
    scores = np.empty((len(q), k), dtype=np.float32)
    indices = np.empty((len(q), k), dtype=np.int64)
    if k == 0 or len(q) == 0:
        return scores, indices
    extra = 1 if k < n_r else 0  # one more than asked shows whether a tie crosses the k-th place
    for start, _, block in query_blocks(q, r, chunk_size, threads):
        top = torch.topk(block, k + extra, dim=1, sorted=True)
        s, i = top.values.numpy(), top.indices.numpy()
        if extra:
            for row in np.flatnonzero(s[:, k] == s[:, k - 1]):
                # rare: the k-th score is shared with references topk left out; take the lowest
                # indices among all references with that score.
                v = s[row, k - 1]
                full = block[row].numpy()
                above = np.flatnonzero(full > v)
                tied = np.flatnonzero(full == v)[: k - len(above)]
                keep = np.concatenate([above, tied])
                s[row, :k], i[row, :k] = full[keep], keep
            s, i = s[:, :k], i[:, :k]
        # topk's order among equal scores is unspecified: make it index order.
        if k > 1:
            order = np.lexsort((i, -s), axis=1)
            s = np.take_along_axis(s, order, 1)
            i = np.take_along_axis(i, order, 1)
        scores[start : start + len(s)] = s
        indices[start : start + len(s)] = i
    return scores, indices


# --- Counting references above a threshold, the metrics' inner loop --------------------------

# Columns per counting tile. The tile's bool mask stays in cache (compare + count on one pass over
# a 1024 x 40k block took 0.079 s, in tiles 0.033 s), and 2040 = 255 x 8: the mask is summed as
# int64 words of 8 bools, whose byte lanes then hold at most 255 — no carries (0.025 s).
COUNT_TILE = 2040
_BYTES = 0x00FF00FF00FF00FF
_SHORTS = 0x0000FFFF0000FFFF


def row_counts(mask: torch.Tensor) -> torch.Tensor:
    """Per row, the number of True entries of a contiguous ``(b, w)`` bool mask with ``w`` a
    multiple of 8 and at most :data:`COUNT_TILE` (int64). A bool sum casts every entry to an
    integer first; summing 8 bools per int64 word reads the mask once."""
    import torch

    v = mask.view(torch.int64).sum(1)
    v = (v & _BYTES) + ((v >> 8) & _BYTES)  # 16-bit lanes
    v = (v & _SHORTS) + ((v >> 16) & _SHORTS)  # 32-bit lanes
    return (v & 0xFFFFFFFF) + (v >> 32)


def count_above(scores: torch.Tensor, thresholds: torch.Tensor | float) -> torch.Tensor:
    """Per row of ``scores`` (b, n), the number of entries ``> thresholds`` ((b, 1) or a number),
    as int64. ``thresholds`` should have the dtype of ``scores`` (a mixed comparison converts
    the block)."""
    import torch

    b, n = scores.shape
    above = torch.zeros(b, dtype=torch.int64)
    mask = torch.zeros(b, COUNT_TILE, dtype=torch.bool)
    for j in range(0, n, COUNT_TILE):
        tile = scores[:, j : j + COUNT_TILE]
        w = tile.shape[1]
        if w < COUNT_TILE:
            mask[:, w:] = False
        torch.gt(tile, thresholds, out=mask[:, :w])
        above += row_counts(mask)
    return above


def exact_dots(
    q: torch.Tensor,
    r: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    *,
    exact: bool = True,
    pairs_per_chunk: int = 8192,
) -> torch.Tensor:
    """Dot products ``q[rows[i]] · r[cols[i]]`` of float32 vectors for index pairs, a chunk of
    pairs at a time (memory: two chunk × dim gathers).

    ``exact``: computed in float64, where the products are exact and the sum is off by at most
    ~dim·2^-53 — the score the float32 vectors really have (a float32 matrix multiply misorders
    references a few 1e-8 apart). Otherwise in float32 (about half the memory traffic; off by at
    most dim·2^-24 for unit vectors). Returns float64 either way.
    """
    import torch

    out = torch.empty(len(rows), dtype=torch.float64)
    for s in range(0, len(rows), pairs_per_chunk):
        e = s + pairs_per_chunk
        a, b = q[rows[s:e]], r[cols[s:e]]
        out[s:e] = (a.double() * b.double()).sum(1) if exact else (a * b).sum(1)
    return out
