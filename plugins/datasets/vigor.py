"""Dataset ``vigor``: VIGOR (Zhu et al., CVPR 2021) as used by Sample4Geo (sample4geo.md §7).

Per city, ``splits/<city>/satellite_list.txt`` lists the satellite tiles and the label files
(``same_area_balanced_{train,test}.txt``, ``pano_label_balanced.txt``) hold 13 whitespace-separated
columns: the panorama, its positive tile and pixel offset, then three semi-positive tiles, each
with its offset. ``mode: same`` trains and tests on all four cities; ``mode: cross`` trains on
NewYork + Seattle and tests on Chicago + SanFrancisco. The test gallery is every tile of the test
cities (also tiles that are nobody's positive); training references are the positive tiles.
Coordinates come from the tile names ``satellite_<lat>_<lon>.png`` (and the panorama names
``<id>,<lat>,<lon>,.jpg`` for queries).

Training batches may hold a panorama together with its semi-positive tiles (as negatives), as in
the released code; ``semi_positive_conflicts: true`` keeps them apart (FIDELITY.md, row 1).

Images may sit in Sample4Geo's layout (``ground/<city>/``, ``satellite/<city>/``) or in the
official release layout (``<city>/panorama/``, ``<city>/satellite/``); both are recognised.
"""

from __future__ import annotations

import os
from typing import Literal

import numpy as np
from pydantic import Field, PositiveInt

import geokit
from geokit.data import EvalSet, TrainSet
from geokit.problems import problem
from geokit_plugins.datasets._benchmark_common import BenchmarkDataset, BenchmarkOptions, read_text_lines

LAYOUT = """  <root>/splits/<city>/satellite_list.txt           one tile name per line
  <root>/splits/<city>/same_area_balanced_train.txt  13 columns: pano, positive tile, dx, dy,
  <root>/splits/<city>/same_area_balanced_test.txt     then 3 x (semi-positive tile, dx, dy)
  <root>/splits/<city>/pano_label_balanced.txt       all panoramas of the city (cross-area)
  <root>/ground/<city>/<pano file>                   panoramas (or <root>/<city>/panorama/)
  <root>/satellite/<city>/satellite_<lat>_<lon>.png  tiles (or <root>/<city>/satellite/)
  cities: Chicago, NewYork, SanFrancisco, Seattle"""

CITIES = ("Chicago", "NewYork", "SanFrancisco", "Seattle")
CROSS = {"train": ("NewYork", "Seattle"), "test": ("Chicago", "SanFrancisco")}
N_COLUMNS = 13


class VIGOROptions(BenchmarkOptions):
    query_size: tuple[PositiveInt, PositiveInt] = Field((384, 768), description="[height, width] of panoramas")
    mode: Literal["same", "cross"] = Field(
        "same", description="same: same-area (4 cities); cross: train NewYork+Seattle, test Chicago+SanFrancisco"
    )
    semi_positive_conflicts: bool = Field(
        False,
        description="keep a panorama's semi-positive tiles out of its training batch (and out of its "
        "DSS list); off: they may share its batch as negatives, as in the released code (FIDELITY.md)",
    )


def tile_latlon(name: str) -> tuple[float, float] | None:
    """``satellite_<lat>_<lon>.png`` -> (lat, lon), or None."""
    parts = os.path.splitext(name)[0].split("_")
    try:
        lat, lon = float(parts[-2]), float(parts[-1])
    except (ValueError, IndexError):
        return None
    return (lat, lon) if abs(lat) <= 90 and abs(lon) <= 180 else None


def pano_latlon(name: str) -> tuple[float, float] | None:
    """``<id>,<lat>,<lon>,.jpg`` -> (lat, lon), or None."""
    parts = name.split(",")
    try:
        lat, lon = float(parts[1]), float(parts[2])
    except (ValueError, IndexError):
        return None
    return (lat, lon) if abs(lat) <= 90 and abs(lon) <= 180 else None


def train_set_from_labels(
    pano_paths: list[str],
    tile_paths: list[str],
    labels: np.ndarray,
    tile_gps: np.ndarray | None,
    *,
    semi_positive_conflicts: bool = False,
) -> TrainSet:
    """The training set: one pair per panorama, references = the positive tiles (sorted).

    :param labels: ``(N, 4)`` global tile indices per panorama: positive, then 3 semi-positives.
    :param semi_positive_conflicts: declare each panorama's semi-positive tiles (those that are
        training references) as batch conflicts, so they never share its batch. The released
        code has no such rule: there a semi-positive may be another batch item's positive and
        acts as a negative (43-48 % of batch items, measured in BENCHMARKS.md, "Sampler fidelity").
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1, 4)
    refs = np.unique(labels[:, 0])  # training references: the positive tiles
    to_ref = np.full(len(tile_paths) + 1, -1, dtype=np.int64)  # last slot: keeps -1 at -1
    to_ref[refs] = np.arange(len(refs))
    # no pairs (a folder without the label files, reported by problem() under verify): an empty
    # set, which verify reports, instead of a (0, 3) table that TrainSet cannot reshape
    conflicts = to_ref[labels[:, 1:]] if semi_positive_conflicts and len(labels) else None
    gps = None if tile_gps is None else np.asarray(tile_gps)[refs]
    return TrainSet(
        list(pano_paths),
        [tile_paths[j] for j in refs],
        to_ref[labels[:, 0]],
        reference_gps=gps,
        pair_conflicts=conflicts,
    )


class VIGORDataset(BenchmarkDataset):
    """VIGOR: panoramas with one positive and three semi-positive tiles; same- or cross-area."""

    name = "vigor"
    layout = LAYOUT
    query_view = "ground"
    reference_view = "satellite"
    splits = ("test",)

    def __init__(self, options: VIGOROptions):
        super().__init__(options)
        self.options: VIGOROptions = options

    def cities(self, part: str) -> tuple[str, ...]:
        return CITIES if self.options.mode == "same" else CROSS[part]

    def label_file(self, part: str) -> str:
        return f"same_area_balanced_{part}.txt" if self.options.mode == "same" else "pano_label_balanced.txt"

    def _image_dir(self, city: str, view: str) -> str | None:
        """The folder of a city's panoramas (view 'ground') or tiles ('satellite'), either layout."""
        official = "panorama" if view == "ground" else "satellite"
        for cand in (self.root / view / city, self.root / city / official):
            if cand.is_dir():
                return str(cand)
        problem(
            f"{view} images of {city} not found: expected {self.root / view / city}/ (Sample4Geo "
            f"layout) or {self.root / city / official}/ (official VIGOR layout)",
            file=f"{view}/{city}",
            category="missing city",
        )
        return None

    def _city_ok(self, city: str, part: str) -> bool:
        folder = self.root / "splits" / city
        if folder.is_dir():
            return True
        # the layout once per dataset: an empty folder misses every city
        layout = "" if getattr(self, "_layout_shown", False) else f" Expected layout:\n{self.layout}"
        self._layout_shown = True
        problem(
            f"city folder missing: {folder} (mode '{self.options.mode}' {part} needs "
            f"{', '.join(self.cities(part))}).{self.suggest_root(f'splits/{city}')}{layout}",
            file=f"splits/{city}",
            category="missing city",
        )
        return False

    def _satellites(self, part: str) -> dict:
        """Tiles of the part's cities in list order: paths, per-city name -> global index, lat/lon."""

        def build() -> dict:
            paths: list[str] = []
            index: dict[str, dict[str, int]] = {}
            gps: list[tuple[float, float]] = []
            gps_ok = True
            skipped: set[str] = set()
            for city in self.cities(part):
                index[city] = {}
                if not self._city_ok(city, part):
                    continue
                rel = f"splits/{city}/satellite_list.txt"
                path = self.require_file(rel, f"the tile list of {city}")
                folder = self._image_dir(city, "satellite")
                if folder is None:
                    skipped.add(city)  # reported once; its label rows are not checked against it
                    continue
                for n, text in read_text_lines(path, rel):
                    name = text.split()[0]
                    if name in index[city]:
                        problem(f"tile {name} is listed twice", file=rel, line=n, category="malformed row")
                        continue
                    p = os.path.join(folder, name)
                    if not self.image_ok(p, rel, n):
                        continue
                    ll = tile_latlon(name)
                    if ll is None:
                        problem(
                            f"tile name {name!r} does not carry its position (expected satellite_<lat>_<lon>.png)",
                            file=rel,
                            line=n,
                            category="no GPS",
                            warning=True,
                        )
                        gps_ok = False
                    index[city][name] = len(paths)
                    paths.append(p)
                    gps.append(ll or (np.nan, np.nan))
            if not paths:
                problem(f"no satellite tiles for {', '.join(self.cities(part))}", file="splits", category="empty split")
            return {
                "paths": paths,
                "index": index,
                "skipped": skipped,
                "gps": np.asarray(gps, dtype=np.float64).reshape(-1, 2) if gps_ok else None,
            }

        return self.cached(f"sat/{self.cities(part)}", build)

    def _panoramas(self, part: str) -> dict:
        """Rows of the part's label files: panorama paths, (N, 4) global tile indices, lat/lon."""

        def build() -> dict:
            sats = self._satellites(part)
            paths: list[str] = []
            labels: list[list[int]] = []
            gps: list[tuple[float, float] | None] = []
            for city in self.cities(part):
                if not (self.root / "splits" / city).is_dir() or city in sats["skipped"]:
                    continue  # reported with the tiles
                rel = f"splits/{city}/{self.label_file(part)}"
                path = self.require_file(rel, f"the {part} label file of {city}")
                folder = self._image_dir(city, "ground")
                if folder is None:
                    continue
                names = sats["index"][city]
                for n, text in read_text_lines(path, rel):
                    cols = text.split()
                    if len(cols) != N_COLUMNS:
                        problem(
                            f"expected {N_COLUMNS} whitespace-separated columns (panorama, positive tile, "
                            f"dx, dy, then 3 x semi-positive tile, dx, dy), found {len(cols)}",
                            file=rel,
                            line=n,
                            category="malformed row",
                        )
                        continue
                    row, bad = [], False
                    for col in (1, 4, 7, 10):
                        j = names.get(cols[col])
                        if j is None:
                            what = "positive" if col == 1 else f"semi-positive {col // 3}"
                            problem(
                                f"{what} tile {cols[col]} (column {col + 1}) is not a listed, present "
                                f"tile of splits/{city}/satellite_list.txt",
                                file=rel,
                                line=n,
                                category="unknown tile",
                            )
                            bad = True
                            break
                        row.append(j)
                    if bad:
                        continue
                    for col in (2, 3, 5, 6, 8, 9, 11, 12):
                        try:
                            float(cols[col])
                        except ValueError:
                            problem(
                                f"column {col + 1} (a pixel offset) is {cols[col]!r}, not a number",
                                file=rel,
                                line=n,
                                category="malformed row",
                            )
                            bad = True
                            break
                    if bad:
                        continue
                    p = os.path.join(folder, cols[0])
                    if not self.image_ok(p, rel, n):
                        continue
                    paths.append(p)
                    labels.append(row)
                    gps.append(pano_latlon(cols[0]))
            if not paths:
                problem(f"no usable panoramas in the {part} label files", file="splits", category="empty split")
            has_gps = bool(gps) and all(g is not None for g in gps)
            return {
                "paths": paths,
                "labels": np.asarray(labels, dtype=np.int64).reshape(-1, 4),
                "gps": np.asarray(gps, dtype=np.float64).reshape(-1, 2) if has_gps else None,
            }

        return self.cached(f"pano/{part}", build)

    def train_set(self) -> TrainSet:
        sats, panos = self._satellites("train"), self._panoramas("train")
        return train_set_from_labels(
            panos["paths"],
            sats["paths"],
            panos["labels"],
            sats["gps"],
            semi_positive_conflicts=self.options.semi_positive_conflicts,
        )

    def eval_set(self, split: str | None = None) -> EvalSet:
        split = self.check_split(split)
        sats, panos = self._satellites("test"), self._panoramas("test")
        labels = panos["labels"]
        return EvalSet(
            panos["paths"],
            sats["paths"],
            query_labels=labels[:, 0].copy(),
            reference_labels=np.arange(len(sats["paths"])),
            semi_positives=np.ascontiguousarray(labels[:, 1:]),
            query_gps=panos["gps"],
            reference_gps=sats["gps"],
            name=split,
        )

    def known_sizes(self) -> dict[str, int]:
        # VIGOR paper: 105,214 panoramas, 90,618 tiles (same-area test gallery: all tiles).
        if self.options.mode == "same":
            return {"train pairs": 52_609, "test queries": 52_605, "test references": 90_618}
        return {"train pairs": 51_520, "test queries": 53_694, "test references": 46_563}


@geokit.hookimpl
def geokit_register_datasets(registry):
    registry.add(
        "vigor",
        VIGORDataset,
        options=VIGOROptions,
        summary="VIGOR (splits/<city>/, ground/, satellite/): same- or cross-area, semi-positives",
    )
