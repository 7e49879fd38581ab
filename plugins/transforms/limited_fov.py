"""Transform ``limited_fov``: a limited field of view of unknown orientation, cut from a panorama.

Limited-FoV cross-view work (e.g. on CVUSA/CVACT) queries with a window of the north-aligned
panorama instead of the whole 360°: the window covers ``fov`` degrees at an azimuth drawn per
sample in training and fixed per image in evaluation (the generator the engine passes is seeded
that way), wrapping around the panorama's seam. The output is ``round(width · fov / 360)``
columns wide, the height unchanged.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

import geokit


class LimitedFoVOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fov: float = Field(90.0, gt=0, le=360, description="horizontal field of view in degrees")
    views: list[Literal["query", "reference"]] = Field(["query"], description="views to cut (panoramas)")


class LimitedFoV:
    """A window of ``fov`` degrees at a random azimuth (see the module docstring)."""

    def __init__(self, options: LimitedFoVOptions) -> None:
        self.fov, self.views = float(options.fov), set(options.views)

    def width(self, full: int) -> int:
        return max(1, min(full, int(round(full * self.fov / 360.0))))

    def output_size(self, size: tuple[int, int], view: str) -> tuple[int, int]:
        return (size[0], self.width(size[1])) if view in self.views else size

    def __call__(self, image: np.ndarray, *, view: str, training: bool, rng: np.random.Generator) -> np.ndarray:
        if view not in self.views:
            return image
        full = image.shape[1]
        start = int(rng.integers(0, full))
        cols = (start + np.arange(self.width(full))) % full
        return np.ascontiguousarray(image[:, cols])


@geokit.hookimpl
def geokit_register_transforms(registry):
    registry.add(
        "limited_fov",
        LimitedFoV,
        options=LimitedFoVOptions,
        summary="a panorama window of fov degrees at a random azimuth (fixed per image in evaluation)",
    )
