"""Dataset ``university1652``: University-1652 (Zheng et al., ACM MM 2020), drone <-> satellite.

Training pairs every drone image of ``train/drone/<class>/`` with the one tile of
``train/satellite/<class>/`` (701 buildings), whatever the evaluation direction, so that a batch
never holds one building twice. Evaluation:

- ``direction: drone2sat``: queries ``test/query_drone``, gallery ``test/gallery_satellite``;
- ``direction: sat2drone``: queries ``test/query_satellite``, gallery ``test/gallery_drone``.

Labels are the class folder numbers; a gallery image matches a query of the same building, and
``AP`` is reported (several true matches per query). ``protocol: official`` (default) keeps the
250 distractor buildings that have no query in the gallery, as the University-1652 benchmark
does; ``protocol: sample4geo`` removes them, as the Sample4Geo evaluation code does (its labels
−1 are "junk"), which is what its published numbers used.

``query_size``/``reference_size`` follow the evaluation direction; a drone image is always
loaded at the drone view's size and a tile at the satellite view's size (also in training).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

import geokit
from geokit.data import EvalSet, Size, TrainSet, load_image
from geokit.errors import GeokitError
from geokit.problems import problem
from geokit_plugins.datasets._benchmark_common import BenchmarkDataset, BenchmarkOptions, list_images

LAYOUT = """  <root>/train/drone/<class>/image-NN.jpeg      drone views of each training building (0839, ...)
  <root>/train/satellite/<class>/<class>.jpg    one satellite tile per training building
  <root>/test/query_drone/<class>/...           drone -> satellite queries (701 buildings)
  <root>/test/gallery_satellite/<class>/...     951 tiles: 701 query buildings + 250 distractors
  <root>/test/query_satellite/<class>/...       satellite -> drone queries
  <root>/test/gallery_drone/<class>/...         drone gallery (951 buildings)"""

FOLDERS = {"drone2sat": ("query_drone", "gallery_satellite"), "sat2drone": ("query_satellite", "gallery_drone")}
DRONE_FOLDERS = frozenset({"drone", "query_drone", "gallery_drone"})


class U1652Options(BenchmarkOptions):
    direction: Literal["drone2sat", "sat2drone"] = Field("drone2sat", description="evaluation direction")
    protocol: Literal["official", "sample4geo"] = Field(
        "official",
        description="official: the 250 distractor buildings stay in the gallery; sample4geo: "
        "they are removed (the Sample4Geo code's junk rule, for comparing with its numbers)",
    )


class University1652Dataset(BenchmarkDataset):
    """University-1652: drone and satellite views of 1,652 university buildings."""

    name = "university1652"
    layout = LAYOUT
    splits = ("test",)
    geometry = "independent"  # the tile is rotated on its own; drone views have no north
    dropout_ratios = (0.4, 0.4)  # the released code: GridDropout ratio 0.4 for drone and satellite alike

    def __init__(self, options: U1652Options):
        super().__init__(options)
        self.options: U1652Options = options
        d2s = options.direction == "drone2sat"
        self.query_view, self.reference_view = ("drone", "satellite") if d2s else ("satellite", "drone")
        self.drone_size: Size = self.query_size if d2s else self.reference_size
        self.satellite_size: Size = self.reference_size if d2s else self.query_size

    def view_of(self, path: str) -> str:
        """'drone' or 'satellite', from the folder above the class folder."""
        return "drone" if Path(path).parent.parent.name in DRONE_FOLDERS else "satellite"

    def load_image(self, path: str, size: Size) -> np.ndarray:
        """Drone images at the drone view's size, tiles at the satellite view's size."""
        return load_image(path, self.drone_size if self.view_of(path) == "drone" else self.satellite_size)

    def _classes(self, rel: str) -> dict[int, list[str]]:
        """class number -> sorted image paths of ``root/rel/<class>/``."""

        def build() -> dict[int, list[str]]:
            folder = self.root / rel
            if not folder.is_dir():
                raise GeokitError(
                    f"university1652: folder not found: {folder}.{self.suggest_root(rel)} "
                    f"Expected layout:\n{self.layout}"
                )
            out: dict[int, list[str]] = {}
            for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                if not entry.is_dir() or entry.name.startswith("."):
                    continue
                where = f"{rel}/{entry.name}"
                if not entry.name.isdigit():
                    problem(
                        "class folder names are building numbers (e.g. 0839)", file=where, category="malformed folder"
                    )
                    continue
                images = list_images(Path(entry.path))
                if not images:
                    problem(
                        "class folder holds no image (.jpg, .jpeg, .png, ...)",
                        file=where,
                        category="empty class folder",
                    )
                    continue
                for p in images:
                    self._sources.setdefault(p, where)
                out[int(entry.name)] = images
            if not out:
                problem("no class folders", file=rel, category="empty split")
            return out

        return self.cached(f"classes/{rel}", build)

    def train_set(self) -> TrainSet:
        drones, sats = self._classes("train/drone"), self._classes("train/satellite")
        for cls in sorted(set(drones) ^ set(sats)):
            have, lack = ("drone", "satellite") if cls in drones else ("satellite", "drone")
            problem(
                f"building {cls:04d} has {have} images but no {lack} folder",
                file=f"train/{have}/{cls:04d}",
                category="unpaired class",
            )
        query, refs, pair_ref = [], [], []
        for cls in sorted(set(drones) & set(sats)):
            if len(sats[cls]) != 1:
                problem(
                    f"expected one satellite tile per building, found {len(sats[cls])}",
                    file=f"train/satellite/{cls:04d}",
                    category="malformed folder",
                )
                continue
            refs.append(sats[cls][0])
            query.extend(drones[cls])
            pair_ref.extend([len(refs) - 1] * len(drones[cls]))
        return TrainSet(query, refs, np.asarray(pair_ref, dtype=np.int64))

    def eval_set(self, split: str | None = None) -> EvalSet:
        split = self.check_split(split)
        q_rel, g_rel = (f"test/{f}" for f in FOLDERS[self.options.direction])
        queries, gallery = self._classes(q_rel), self._classes(g_rel)
        missing = sorted(set(queries) - set(gallery))
        if missing:
            problem(
                f"{len(missing)} query buildings have no gallery folder in {g_rel} "
                f"(first: {', '.join(f'{c:04d}' for c in missing[:5])})",
                file=q_rel,
                category="unpaired class",
            )
            queries = {c: v for c, v in queries.items() if c in gallery}
        if self.options.protocol == "sample4geo":
            gallery = {c: v for c, v in gallery.items() if c in queries}
        q_paths = [p for c in sorted(queries) for p in queries[c]]
        q_labels = [c for c in sorted(queries) for _ in queries[c]]
        g_paths = [p for c in sorted(gallery) for p in gallery[c]]
        g_labels = [c for c in sorted(gallery) for _ in gallery[c]]
        return EvalSet(
            q_paths,
            g_paths,
            np.asarray(q_labels, dtype=np.int64),
            np.asarray(g_labels, dtype=np.int64),
            multi_positive=True,
            name=split,
        )

    def known_sizes(self) -> dict[str, int]:
        official = self.options.protocol == "official"
        if self.options.direction == "drone2sat":
            test = {"test queries": 37_855, "test references": 951 if official else 701}
        else:
            test = {"test queries": 701, "test references": 51_355 if official else 37_855}
        return {"train pairs": 37_854, "train references": 701, **test}


@geokit.hookimpl
def geokit_register_datasets(registry):
    registry.add(
        "university1652",
        University1652Dataset,
        options=U1652Options,
        summary="University-1652 drone<->satellite; official or sample4geo (junk-excluded) protocol",
    )
