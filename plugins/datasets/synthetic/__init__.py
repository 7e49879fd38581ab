"""Bundled plugin ``synthetic``: geokit's own cross-view world, and the ``geokit demo`` command.

A procedurally generated city (see :mod:`geokit_plugins.datasets.synthetic.world`): every street location
has a north-up aerial tile and a ground 360° panorama ray-cast from eye height, with GPS. It is
generated once into a cache folder (``root``, else ``$GEOKIT_CACHE``, else ``~/.cache/geokit``)
named by a hash of every generation option, and that folder is an ordinary ``pairs`` dataset
(train.csv/val.csv/test.csv + images), read here by the ``pairs`` plugin's code.

Splits: ``split: area`` puts test locations in the south-east corner of the map and validation
locations in the north-west corner, with a gap of one tile between areas (cross-area, like
CVUSA/VIGOR); ``split: random`` draws them from the whole map (same-area).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator

import geokit
from geokit_plugins.datasets.pairs import PairsDataset, PairsOptions

DEMO_CONFIG = Path(__file__).with_name("demo.yaml")


class SyntheticOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    root: Path | None = Field(
        None, description="cache folder for generated worlds; null: $GEOKIT_CACHE or ~/.cache/geokit"
    )
    seed: int = Field(0, description="the city and its locations")
    locations: PositiveInt = Field(3600, description="street locations sampled (before the split)")
    map_size: int = Field(1800, ge=128, le=8192, description="map side in pixels")
    metres_per_pixel: float = Field(1.0, gt=0, description="ground distance of one map pixel")
    spacing: float = Field(14.0, gt=0, description="minimum distance between locations, metres")
    tile_metres: float = Field(80.0, gt=0, description="side of an aerial tile, metres")
    query_size: tuple[PositiveInt, PositiveInt] = Field((32, 128), description="[height, width] of panoramas")
    reference_size: tuple[PositiveInt, PositiveInt] = Field((64, 64), description="[height, width] of aerial tiles")
    heading: Literal["north", "random"] = Field("north", description="panorama column 0: north, or a random heading")
    split: Literal["area", "random"] = Field(
        "area", description="area: test/val in separate corners; random: same area"
    )
    test_fraction: float = Field(0.16, gt=0, lt=1)
    val_fraction: float = Field(0.07, ge=0, lt=1, description="validation locations (carved from training)")
    origin_lat: float = Field(47.3769, ge=-85, le=85, description="latitude of the map centre")
    origin_lon: float = Field(8.5417, ge=-180, le=180, description="longitude of the map centre")
    eye_height: float = Field(1.7, gt=0, description="camera height above the street, metres")
    view_distance: float = Field(160.0, gt=1, description="how far the panorama ray caster looks, metres")
    augment: bool | Literal["geometry"] = Field(
        True,
        description="Sample4Geo pair-consistent training augmentation: true (flips, quarter "
        "turns with matching panorama rolls, photometric, dropout), geometry (flips and turns only: "
        "cheaper on a CPU), false",
    )
    in_memory: bool = Field(True, description="keep decoded images in memory after first use")

    @field_validator("reference_size")
    @classmethod
    def _square(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] != v[1]:
            raise ValueError("aerial tiles are square: give [n, n]")
        return v


class SyntheticDataset(PairsDataset):
    """The synthetic city, read as the ``pairs`` dataset it writes."""

    def __init__(self, options: SyntheticOptions):
        from geokit_plugins.datasets.synthetic.generate import ensure_world

        self.synthetic_options = options
        self.world = ensure_world(options)
        super().__init__(
            PairsOptions(
                root=self.world,
                query_size=options.query_size,
                reference_size=options.reference_size,
                query_type="panorama",
                augment=bool(options.augment),
            )
        )
        if options.augment == "geometry":
            from geokit.augment import PairAugment

            self._augment = PairAugment(geometry="panorama", photometric=False)
        self._images: dict[tuple[str, tuple[int, int]], np.ndarray] = {}

    def load_image(self, path: str, size: tuple[int, int]) -> np.ndarray:
        if not self.synthetic_options.in_memory:
            return super().load_image(path, size)
        key = (path, (size[0], size[1]))
        img = self._images.get(key)
        if img is None:
            img = self._images[key] = super().load_image(path, size)
            img.flags.writeable = False
        return img.copy()  # callers may modify their copy (augmentation)


@geokit.hookimpl
def geokit_register_datasets(registry):
    registry.add(
        "synthetic",
        SyntheticDataset,
        options=SyntheticOptions,
        summary="generated city: ray-cast street panoramas + aerial tiles with GPS (no download)",
    )


@geokit.hookimpl
def geokit_register_commands(cli):
    from geokit_plugins.datasets.synthetic.demo import demo_cmd

    cli.add_command(demo_cmd)
