"""Index types and their parameters (:class:`IndexSpec`): one source for the defaults the CLI shows."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

from geokit.errors import GeokitError

if TYPE_CHECKING:  # importing the spec stays cheap: the CLI reads its defaults on start
    import numpy as np

    from geokit.embedding import StoredDtype

IndexType = Literal["flat", "ivf", "ivfpq", "hnsw"]
TYPES: tuple[str, ...] = get_args(IndexType)


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

    type: IndexType = "flat"
    dtype: StoredDtype = "float32"
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

    def vector_dtype(self) -> np.dtype:
        """The dtype of the stored vectors (:func:`geokit.embedding.embedding_dtype`): ``dtype``
        for a flat index, float32 for the faiss ones (faiss takes float32 only)."""
        from geokit.embedding import embedding_dtype

        return embedding_dtype(self.dtype if self.type == "flat" else "float32")

    def train_sample(self, n: int, dim: int) -> np.ndarray:
        """The sorted positions of the ``ivf``/``ivfpq`` training sample (same seed, same sample,
        whether the build runs in memory or from a spool)."""
        import numpy as np

        return np.sort(np.random.default_rng(self.seed).choice(n, self.train_size_for(n, dim), replace=False))

    def train_size_for(self, n: int, dim: int) -> int:
        if self.type not in ("ivf", "ivfpq"):
            return 0
        want = self.train_size or max(64 * self.nlist_for(n), 2**self.nbits * 64 if self.type == "ivfpq" else 0)
        return int(min(n, want))


def new_faiss_index(spec: IndexSpec, n: int, dim: int) -> tuple[Any, dict[str, Any]]:
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
