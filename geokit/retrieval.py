"""The one retrieval path: queries in blocks against the gallery, never the dense Q×R matrix.

Evaluation metrics, similarity mining and exact search all walk :func:`score_blocks`: a block of
``chunk`` queries is scored against every reference with one matrix multiply (cosine similarity
of L2-normalised float32 vectors), consumed, and dropped. Memory is bounded by chunk × R plus
what the consumer keeps per query (Q × k for top-k), whatever Q is.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

BLOCK_BYTES = 256 * 2**20  # one float32 score block; the default chunk size keeps to this


def as_matrix(x: Any, *, normalise: bool = True) -> torch.Tensor:
    """numpy array or tensor (any float dtype) -> contiguous float32 CPU tensor, rows L2-normalised."""
    import torch

    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    t = t.detach().to("cpu", torch.float32)
    if t.ndim != 2:
        raise ValueError(f"expected a 2-D (n, dim) array of embeddings, got shape {tuple(t.shape)}")
    if normalise:
        t = torch.nn.functional.normalize(t, dim=1)
    return t.contiguous()


def default_chunk(n_references: int) -> int:
    """Queries per block so that a float32 block stays near :data:`BLOCK_BYTES`."""
    return int(np.clip(BLOCK_BYTES // (4 * max(n_references, 1)), 16, 8192))


def score_blocks(query: Any, reference: Any, chunk_size: int | None = None,
                 ) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, scores)`` where ``scores[i, j]`` is the cosine similarity of query
    ``start + i`` and reference ``j``. Inputs may be numpy arrays or tensors."""
    import torch

    q = as_matrix(query)
    r = as_matrix(reference)
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"query dim {q.shape[1]} != reference dim {r.shape[1]}")
    chunk = chunk_size or default_chunk(len(r))
    rt = r.t()
    with torch.inference_mode():
        for start in range(0, len(q), chunk):
            yield start, q[start:start + chunk] @ rt


def search(query: Any, reference: Any, k: int, *, chunk_size: int | None = None,
           ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` references per query: ``(scores, indices)``, each ``(Q, k)``, best first.

    Ties are broken by the lower reference index, so results are deterministic.
    """
    import torch

    q = as_matrix(query)
    r = as_matrix(reference)
    k = min(k, len(r))
    scores = np.empty((len(q), k), dtype=np.float32)
    indices = np.empty((len(q), k), dtype=np.int64)
    for start, block in score_blocks(q, r, chunk_size):
        top = torch.topk(block, k, dim=1, sorted=True)
        s, i = top.values.numpy(), top.indices.numpy()
        # topk's order among equal scores is unspecified: make it index order.
        order = np.lexsort((i, -s), axis=1) if k > 1 else None
        if order is not None:
            s = np.take_along_axis(s, order, 1)
            i = np.take_along_axis(i, order, 1)
        scores[start:start + len(s)] = s
        indices[start:start + len(s)] = i
    return scores, indices
