"""Pair-consistent training augmentation (Sample4Geo §6), shared by dataset plugins.

Geometry is applied to both views together so the pair stays a true match: a horizontal flip
mirrors the aerial tile and the panorama's azimuth; rotating the north-up tile by k·90° is
matched by rolling the panorama by k quarter turns. Photometric and dropout pipelines come from
albumentations (2.0.x API) and are seeded from the caller's generator, so augmentation is a
function of (seed, epoch, sample index) and does not depend on workers or ranks.

Panorama convention: column 0 looks north and azimuth grows clockwise (east at W/4).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # never phone home on import

Geometry = Literal["panorama", "independent", "none"]


def rotate_pair(reference: np.ndarray, panorama: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rotate a north-up tile by ``k`` quarter turns counter-clockwise and roll the panorama to match."""
    w = panorama.shape[1]
    ref = np.rot90(reference, k, axes=(0, 1))
    # After a CCW turn the tile's top shows what lay east, which sat k·W/4 columns right.
    return np.ascontiguousarray(ref), np.ascontiguousarray(np.roll(panorama, -k * w // 4, axis=1))


def flip_pair(reference: np.ndarray, panorama: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror east-west: the tile left-right, and the panorama azimuth θ -> -θ (column j -> W-j)."""
    return (np.ascontiguousarray(reference[:, ::-1]),
            np.ascontiguousarray(np.roll(panorama[:, ::-1], 1, axis=1)))


@dataclass(frozen=True)
class PairAugment:
    """The Sample4Geo training augmentation, configurable per dataset.

    :param geometry: ``panorama`` (joint flip, tile rotation with matching roll), ``independent``
        (joint flip, tile rotated on its own, as for University-1652 drone images), ``none``.
    """

    geometry: Geometry = "panorama"
    flip_p: float = 0.5
    rotate_p: float = 0.75
    photometric: bool = True
    query_dropout_ratio: float = 0.5
    reference_dropout_ratio: float = 0.4

    @cached_property
    def _pipelines(self) -> tuple[Any, Any]:
        import albumentations as A

        def pipe(ratio: float) -> Any:
            return A.Compose([
                A.ImageCompression(quality_range=(90, 100), p=0.5),
                A.ColorJitter(brightness=0.15, contrast=0.15, saturation=0.15, hue=0.15, p=0.5),
                A.OneOf([A.AdvancedBlur(p=1.0), A.Sharpen(p=1.0)], p=0.3),
                A.OneOf([A.GridDropout(ratio=ratio, p=1.0),
                         A.CoarseDropout(num_holes_range=(10, 25), hole_height_range=(0.1, 0.2),
                                         hole_width_range=(0.1, 0.2), p=1.0)], p=0.3),
            ])

        return pipe(self.query_dropout_ratio), pipe(self.reference_dropout_ratio)

    def __call__(self, query: np.ndarray, reference: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if self.geometry != "none" and rng.random() < self.flip_p:
            if self.geometry == "panorama":
                reference, query = flip_pair(reference, query)
            else:
                reference = np.ascontiguousarray(reference[:, ::-1])
                query = np.ascontiguousarray(query[:, ::-1])
        if self.geometry != "none" and rng.random() < self.rotate_p:
            k = int(rng.integers(1, 4))
            if self.geometry == "panorama":
                reference, query = rotate_pair(reference, query, k)
            else:
                reference = np.ascontiguousarray(np.rot90(reference, k, axes=(0, 1)))
        if self.photometric:
            qpipe, rpipe = self._pipelines
            seeds = rng.integers(0, 2**31 - 1, size=2)
            qpipe.set_random_seed(int(seeds[0]))
            rpipe.set_random_seed(int(seeds[1]))
            query = qpipe(image=query)["image"]
            reference = rpipe(image=reference)["image"]
        return query, reference
