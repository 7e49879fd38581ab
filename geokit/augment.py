"""Pair-consistent training augmentation (Sample4Geo §6), shared by dataset plugins.

Geometry is applied to both views together so the pair stays a true match: a horizontal flip
mirrors the aerial tile and the panorama's azimuth; rotating the north-up tile by k·90° is
matched by rolling the panorama by k quarter turns. Photometric and dropout pipelines come from
albumentations (2.0.x API) and are seeded from the caller's generator, so augmentation is a
function of (seed, epoch, sample index) and does not depend on workers or ranks.

Dropout geometry (``dropout_geometry``): the released Sample4Geo code ran albumentations 1.x,
whose defaults differ from 2.0's. ``released`` (default) reproduces them: CoarseDropout holes
are 10-20 % of the image *height* on both sides (in pixels, so on a 140×768 panorama they are
14-28 px wide, not 77-154), and GridDropout uses square units of ``W // 10`` at a fixed offset
(0, 0). ``relative`` is geokit's earlier geometry (albumentations 2.0 defaults: hole width a
fraction of the width, grid units ``H // 10 × W // 10`` at random offsets), which drops 4.5×
more of a CVUSA panorama (BENCHMARKS.md, "Sampler fidelity" → dropout).

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
DropoutGeometry = Literal["released", "relative"]


def released_grid_holes(height: int, width: int, ratio: float) -> np.ndarray:
    """GridDropout holes as albumentations 1.x placed them by default: square units of
    ``max(2, W // 10)`` (capped by the height), holes ``int(unit · ratio)`` wide, grid offset
    (0, 0). ``(n, 4)`` int array of ``x1, y1, x2, y2``, empty holes left out."""
    unit_w = max(2, width // 10)
    unit_h = max(min(unit_w, height), 2)
    hole_w = min(max(int(unit_w * ratio), 1), unit_w - 1)
    hole_h = min(max(int(unit_h * ratio), 1), unit_h - 1)
    x1 = np.minimum(np.arange(width // unit_w + 1) * unit_w, width)
    y1 = np.minimum(np.arange(height // unit_h + 1) * unit_h, height)
    xx, yy = np.meshgrid(x1, y1, indexing="ij")
    holes = np.stack([xx, yy, np.minimum(xx + hole_w, width), np.minimum(yy + hole_h, height)], -1).reshape(-1, 4)
    return holes[(holes[:, 2] > holes[:, 0]) & (holes[:, 3] > holes[:, 1])]


_RELEASED_GRID: Any = None


def _released_grid_dropout(ratio: float) -> Any:
    """An albumentations 2.0 GridDropout that places its holes like 1.x (:func:`released_grid_holes`)."""
    global _RELEASED_GRID
    if _RELEASED_GRID is None:
        import albumentations as A

        class ReleasedGridDropout(A.GridDropout):
            def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
                h, w = params["shape"][:2]
                return {
                    "holes": released_grid_holes(h, w, self.ratio),
                    "seed": self.random_generator.integers(0, 2**32 - 1),
                }

        _RELEASED_GRID = ReleasedGridDropout
    return _RELEASED_GRID(ratio=ratio, p=1.0)


def dropout_choice(ratio: float, height: int, geometry: DropoutGeometry = "released") -> list[Any]:
    """The two dropouts Sample4Geo picks one of (GridDropout or CoarseDropout, 10-25 holes)
    for images ``height`` pixels high, in the given geometry."""
    import albumentations as A

    if geometry == "released":
        lo, hi = max(int(0.1 * height), 1), max(int(0.2 * height), 1)  # pixels, as the released code
        return [
            _released_grid_dropout(ratio),
            A.CoarseDropout(num_holes_range=(10, 25), hole_height_range=(lo, hi), hole_width_range=(lo, hi), p=1.0),
        ]
    if geometry == "relative":
        return [
            A.GridDropout(ratio=ratio, p=1.0),
            A.CoarseDropout(num_holes_range=(10, 25), hole_height_range=(0.1, 0.2), hole_width_range=(0.1, 0.2), p=1.0),
        ]
    raise ValueError(f"unknown dropout geometry {geometry!r}")


def rotate_pair(reference: np.ndarray, panorama: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rotate a north-up tile by ``k`` quarter turns counter-clockwise and roll the panorama to match."""
    w = panorama.shape[1]
    ref = np.rot90(reference, k, axes=(0, 1))
    # After a CCW turn the tile's top shows what lay east, which sat k·W/4 columns right.
    return np.ascontiguousarray(ref), np.ascontiguousarray(np.roll(panorama, -k * w // 4, axis=1))


def flip_pair(reference: np.ndarray, panorama: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror east-west: the tile left-right, and the panorama azimuth θ -> -θ (column j -> W-j)."""
    return (np.ascontiguousarray(reference[:, ::-1]), np.ascontiguousarray(np.roll(panorama[:, ::-1], 1, axis=1)))


@dataclass(frozen=True)
class PairAugment:
    """The Sample4Geo training augmentation, configurable per dataset.

    :param geometry: ``panorama`` (joint flip, tile rotation with matching roll), ``independent``
        (joint flip, tile rotated on its own, as for University-1652 drone images), ``none``.
    :param dropout_geometry: ``released`` (albumentations 1.x geometry, as the released code) or
        ``relative`` (geokit's earlier albumentations 2.0 defaults); see the module docstring.
    """

    geometry: Geometry = "panorama"
    flip_p: float = 0.5
    rotate_p: float = 0.75
    photometric: bool = True
    query_dropout_ratio: float = 0.5
    reference_dropout_ratio: float = 0.4
    dropout_geometry: DropoutGeometry = "released"

    @cached_property
    def _cache(self) -> dict[tuple[str, float, int], Any]:
        return {}

    def pipeline(self, view: str, ratio: float, height: int) -> Any:
        """The photometric + dropout pipeline of one view for images ``height`` pixels high
        (cached; one object per view, since each call re-seeds it)."""
        key = (view, ratio, height if self.dropout_geometry == "released" else 0)
        pipe = self._cache.get(key)
        if pipe is None:
            import albumentations as A

            pipe = self._cache[key] = A.Compose(
                [
                    A.ImageCompression(quality_range=(90, 100), p=0.5),
                    A.ColorJitter(brightness=0.15, contrast=0.15, saturation=0.15, hue=0.15, p=0.5),
                    A.OneOf([A.AdvancedBlur(p=1.0), A.Sharpen(p=1.0)], p=0.3),
                    A.OneOf(dropout_choice(ratio, height, self.dropout_geometry), p=0.3),
                ]
            )
        return pipe

    def __call__(
        self, query: np.ndarray, reference: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        flip = self.geometry != "none" and rng.random() < self.flip_p
        k = int(rng.integers(1, 4)) if self.geometry != "none" and rng.random() < self.rotate_p else 0
        if flip:
            if self.geometry == "panorama":
                reference, query = flip_pair(reference, query)
            else:
                reference = np.ascontiguousarray(reference[:, ::-1])
                query = np.ascontiguousarray(query[:, ::-1])
        if self.photometric:  # before the quarter turn, as the released code: holes turn with the image
            qpipe = self.pipeline("query", self.query_dropout_ratio, query.shape[0])
            rpipe = self.pipeline("reference", self.reference_dropout_ratio, reference.shape[0])
            seeds = rng.integers(0, 2**31 - 1, size=2)
            qpipe.set_random_seed(int(seeds[0]))
            rpipe.set_random_seed(int(seeds[1]))
            query = qpipe(image=query)["image"]
            reference = rpipe(image=reference)["image"]
        if k:
            if self.geometry == "panorama":
                reference, query = rotate_pair(reference, query, k)
            else:
                reference = np.ascontiguousarray(np.rot90(reference, k, axes=(0, 1)))
        return query, reference
