"""Sampler ``gps``: GPS-Sampling (Sample4Geo §4) — batches of geographically close references.

Neighbours of a reference are the ``range`` references nearest to it by *great-circle* distance
(spherical Earth). Latitude/longitude (degrees) become 3-D unit vectors; the chord between two
unit vectors is ``2 sin(θ/2)``, monotone in the central angle θ, so an exact Euclidean kNN on
those vectors returns the geodesic order — no N×N matrix, O(N·k) memory, and no
degrees-fed-to-a-radians-formula aliasing as in the original scripts.

``backend``: ``kdtree`` (default; scipy cKDTree in float64, O(N log N)) or ``faiss`` (exact
``IndexFlatL2`` in float32: brute force O(N²) time, and float32 cannot order tiles a few metres
apart — measured in BENCHMARKS.md, "Samplers (GPS / DSS)").

The batches are then built by :mod:`geokit_plugins.samplers._neighbour_batches` (anchors in seeded random
order, each bringing up to ``select`` neighbours). A dataset without reference GPS is an error
naming the dataset, unless ``fallback: random`` is set (then: plain random batches, with a
warning).

Resume: the neighbour table is a deterministic function of the training set and ``range`` and
the batches a function of (seed, epoch), so the state is only a format version.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
from pydantic import Field

import geokit
from geokit.errors import GeokitError
from geokit.sampling import EpochContext, pack_batches
from geokit_plugins.samplers._neighbour_batches import NeighbourOptions, epoch_batches, resolve_depth

log = logging.getLogger("geokit.sampler.gps")  # under "geokit": goes to the run log


class GpsOptions(NeighbourOptions):
    fallback: Literal["error", "random"] = Field(
        "error", description="dataset without reference GPS: 'error' (default) or 'random' batches"
    )
    backend: Literal["kdtree", "faiss"] = Field("kdtree", description="exact kNN backend")


def unit_vectors(latlon: np.ndarray, *, where: str = "reference_gps") -> np.ndarray:
    """``(n, 2)`` latitude/longitude in degrees -> ``(n, 3)`` float64 points on the unit sphere."""
    latlon = np.asarray(latlon, dtype=np.float64)
    bad = ~np.isfinite(latlon).all(1) | (np.abs(latlon[:, 0]) > 90) | (np.abs(latlon[:, 1]) > 360)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise GeokitError(
            f"{where}: {int(bad.sum())} rows are not latitude/longitude in degrees "
            f"(first: row {k} = {latlon[k].tolist()})"
        )
    lat, lon = np.radians(latlon[:, 0]), np.radians(latlon[:, 1])
    c = np.cos(lat)
    return np.stack([c * np.cos(lon), c * np.sin(lon), np.sin(lat)], axis=1)


def gps_neighbours(
    latlon: np.ndarray,
    k: int,
    *,
    backend: str = "kdtree",
    where: str = "reference_gps",
) -> np.ndarray:
    """``(n, min(k, n-1))`` int32: each point's nearest other points by great-circle distance,
    nearest first. Memory O(n·k); the point itself is never in its own row (duplicates are)."""
    xyz = unit_vectors(latlon, where=where)
    n = len(xyz)
    k = min(k, n - 1)
    if k <= 0:
        return np.zeros((n, 0), dtype=np.int64)
    kq = k + 1
    dtype = np.int32 if n < 2**31 else np.int64
    out = np.empty((n, k), dtype=dtype)
    order = np.arange(n)
    if backend == "kdtree":
        from scipy.spatial import cKDTree

        tree = cKDTree(xyz, balanced_tree=False, compact_nodes=False)  # measured faster to build and query
        order = tree.indices  # querying in tree order keeps each block's walk cache-friendly
        search = lambda x: tree.query(x, k=kq, workers=-1)[1]  # noqa: E731
    elif backend == "faiss":
        import faiss

        index = faiss.IndexFlatL2(3)
        index.add(xyz.astype(np.float32))
        search = lambda x: index.search(x.astype(np.float32), kq)[1]  # noqa: E731
    else:
        raise ValueError(f"unknown backend {backend!r}")
    step = 1 << 15  # query blocks: the distances and the (k+1)-wide rows stay O(block·k)
    for s in range(0, n, step):
        rows = order[s : s + step]
        idx = np.asarray(search(xyz[rows]), dtype=np.int64).reshape(-1, kq)
        own = idx == rows[:, None]
        if own[:, 0].all():
            out[rows] = idx[:, 1:]
            continue
        # Drop the point itself wherever it landed (points at the same place may precede it).
        missing = ~own.any(1)
        own[missing, -1] = True  # self not returned (many duplicates): drop the farthest instead
        keep = np.argsort(own, axis=1, kind="stable")[:, :k]
        out[rows] = np.take_along_axis(idx, keep, 1)
    return out


class GpsSampler:
    """GPS-Sampling: each anchor brings references that are geographically close to its own."""

    def __init__(self, options: GpsOptions):
        self.options = options
        self._cache: tuple[Any, np.ndarray] | None = None  # (fingerprint, neighbour table)
        self._warned = False

    def neighbour_table(self, ctx: EpochContext, range_: int) -> np.ndarray:
        """The reference→reference table (cached while the training set and depth stay the same)."""
        train = ctx.train
        assert train.reference_gps is not None  # batches() handles a dataset without GPS
        gps = np.ascontiguousarray(train.reference_gps)
        key = (hash(gps.tobytes()), len(gps), range_, self.options.backend)
        if self._cache is None or self._cache[0] != key:
            table = gps_neighbours(
                train.reference_gps,
                range_,
                backend=self.options.backend,
                where=f"dataset '{ctx.dataset_name}' reference GPS",
            )
            self._cache = (key, table)
        return self._cache[1]

    def batches(self, ctx: EpochContext) -> list[np.ndarray]:
        o = self.options
        if not ctx.train.has_gps:
            if o.fallback == "random":
                if not self._warned:
                    log.warning(
                        "dataset '%s' has no reference GPS: sampler gps falls back to random batches", ctx.dataset_name
                    )
                    self._warned = True
                return pack_batches(ctx.rng().permutation(len(ctx.train)), ctx.train, ctx.batch_size, o.last_batch)
            raise GeokitError(
                f"dataset '{ctx.dataset_name}' has no reference GPS (TrainSet.reference_gps is None), so "
                "sampler 'gps' cannot find geographic neighbours. Use sampler.name=dss with "
                "sampler.warm_start=random, sampler.name=random, or set sampler.fallback=random."
            )
        select, range_ = resolve_depth(o.select, o.range, ctx.batch_size)
        table = self.neighbour_table(ctx, range_)
        return epoch_batches(ctx, table, o, select=select, range_=range_, key_of_pair=ctx.train.pair_reference)

    def state_dict(self) -> dict[str, Any]:
        return {"version": 1}  # table: recomputed deterministically; batches: a function of (seed, epoch)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state and int(state.get("version", 1)) != 1:
            raise GeokitError(f"gps sampler state has unknown version {state.get('version')}")


@geokit.hookimpl
def geokit_register_samplers(registry):
    registry.add(
        "gps", GpsSampler, options=GpsOptions, summary="GPS-Sampling: geodesic neighbours share a batch (Sample4Geo)"
    )
