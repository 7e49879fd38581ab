"""Dataset ``cvusa``: CVUSA as used by CVM-Net and Sample4Geo (sample4geo.md §7).

Pairs come from ``splits/train-19zl.csv`` (training) and ``splits/val-19zl.csv`` (the test
split; CVUSA has no validation split). A pair's id is the number in its satellite file name; it
is the label (a reference matches the query with the same id) and the row of
``split_locations/all.csv`` (row id−1) that holds its coordinates. As in the original GPS
sampler, columns 2–3 (ground latitude/longitude) are used for both views.
"""

from __future__ import annotations

import csv
import os

import numpy as np
from pydantic import Field, PositiveInt

import geokit
from geokit.data import EvalSet, TrainSet
from geokit.errors import GeokitError
from geokit.problems import problem
from geokit_plugins.datasets._benchmark_common import BenchmarkDataset, BenchmarkOptions, parse_float

LAYOUT = """  <root>/splits/train-19zl.csv        training pairs: satellite,panorama,annotation paths (no header)
  <root>/splits/val-19zl.csv          test pairs, same format
  <root>/split_locations/all.csv      coordinates, row id-1 per id (optional: GPS sampling needs it)
  <root>/bingmap/19/0000001.jpg ...   satellite tiles (paths as listed in the CSV files)
  <root>/streetview/panos/0000001.jpg ...   panoramas"""

SPLIT_FILES = {"train": "splits/train-19zl.csv", "test": "splits/val-19zl.csv"}
GPS_FILE = "split_locations/all.csv"


class CVUSAOptions(BenchmarkOptions):
    query_size: tuple[PositiveInt, PositiveInt] = Field((140, 768), description="[height, width] of panoramas")


class CVUSADataset(BenchmarkDataset):
    """CVUSA: 35,532 training pairs, 8,884 test pairs, one satellite tile per panorama."""

    name = "cvusa"
    layout = LAYOUT
    query_view = "ground"
    reference_view = "satellite"
    splits = ("test",)

    def _rows(self, split: str) -> list[tuple[int, str, str, int]]:
        """(id, panorama path, satellite path, line) per valid row of a split file."""

        def build() -> list[tuple[int, str, str, int]]:
            rel = SPLIT_FILES[split]
            path = self.require_file(rel, f"the {split} split file")
            rows = []
            try:
                with open(path, newline="", encoding="utf-8-sig") as fh:
                    lines = list(csv.reader(fh))
            except (OSError, UnicodeDecodeError, csv.Error) as exc:
                raise GeokitError(f"{rel}: cannot read as CSV: {exc}") from None
            for n, fields in enumerate(lines, start=1):
                fields = [f.strip() for f in fields]
                if not any(fields):
                    continue
                if len(fields) < 2 or not fields[0] or not fields[1]:
                    problem(
                        f"expected 'satellite,panorama[,annotation]' paths, found {','.join(fields)!r}",
                        file=rel,
                        line=n,
                        category="malformed row",
                    )
                    continue
                sat, pano = fields[0], fields[1]
                stem = os.path.splitext(os.path.basename(sat))[0]
                if not stem.isdigit():
                    problem(
                        f"satellite file name {os.path.basename(sat)!r} is not a number "
                        "(the id is the number in the satellite file name, e.g. bingmap/19/0000042.jpg)",
                        file=rel,
                        line=n,
                        category="malformed row",
                    )
                    continue
                sat_p, pano_p = str(self.root / sat), str(self.root / pano)
                if self.image_ok(pano_p, rel, n) & self.image_ok(sat_p, rel, n):
                    rows.append((int(stem), pano_p, sat_p, n))
            if not rows:
                problem("no usable pairs", file=rel, category="empty split")
            return rows

        return self.cached(f"rows/{split}", build)

    def _gps(self) -> np.ndarray | None:
        """``(n, 2)`` ground lat/lon per all.csv row (NaN where malformed), or None without the file."""

        def build() -> np.ndarray | None:
            path = self.root / GPS_FILE
            if not path.is_file():
                problem(
                    f"{path} not found: no GPS, so the 'gps' sampler cannot be used "
                    "(the 'dss' sampler warm-starts with 'random')",
                    category="no GPS",
                    warning=True,
                )
                return None
            out = []
            with open(path, newline="", encoding="utf-8-sig") as fh:
                for n, fields in enumerate(csv.reader(fh), start=1):
                    lat = lon = None
                    if len(fields) < 4:
                        problem(
                            f"expected 5 columns (sat lat, sat lon, ground lat, ground lon, ...), found {len(fields)}",
                            file=GPS_FILE,
                            line=n,
                            category="malformed row",
                        )
                    else:
                        lat = parse_float(fields[2].strip(), "ground latitude", GPS_FILE, n, 90)
                        lon = parse_float(fields[3].strip(), "ground longitude", GPS_FILE, n, 180)
                    out.append((np.nan if lat is None else lat, np.nan if lon is None else lon))
            return np.asarray(out, dtype=np.float64).reshape(-1, 2)

        return self.cached("gps", build)

    def _coords(self, rows: list[tuple[int, str, str, int]], split: str) -> np.ndarray | None:
        table = self._gps()
        if table is None:
            return None
        out = np.full((len(rows), 2), np.nan)
        ok = True
        for i, (pid, _, _, n) in enumerate(rows):
            if not 1 <= pid <= len(table) or np.isnan(table[pid - 1]).any():
                problem(
                    f"id {pid} has no coordinates: {GPS_FILE} row {pid} is missing or malformed ({len(table):,} rows)",
                    file=SPLIT_FILES[split],
                    line=n,
                    category="no GPS",
                )
                ok = False
                continue
            out[i] = table[pid - 1]
        return out if ok else None

    def train_set(self) -> TrainSet:
        rows = self._rows("train")
        refs: dict[str, int] = {}
        pair_ref = [refs.setdefault(sat, len(refs)) for _, _, sat, _ in rows]
        gps = self._coords(rows, "train")
        ref_gps = None
        if gps is not None:
            ref_gps = np.zeros((len(refs), 2))
            ref_gps[pair_ref] = gps
        return TrainSet(
            [pano for _, pano, _, _ in rows], list(refs), np.asarray(pair_ref, dtype=np.int64), reference_gps=ref_gps
        )

    def eval_set(self, split: str | None = None) -> EvalSet:
        split = self.check_split(split)
        rows = self._rows(split)
        refs: dict[str, int] = {}
        ref_ids: list[int] = []
        seen: dict[int, tuple[str, int]] = {}
        for pid, _, sat, n in rows:
            if pid in seen and seen[pid][0] != sat:
                problem(
                    f"id {pid} names satellite {sat} here but {seen[pid][0]} on line {seen[pid][1]}",
                    file=SPLIT_FILES[split],
                    line=n,
                    category="malformed row",
                )
            seen.setdefault(pid, (sat, n))
            if sat not in refs:
                refs[sat] = len(refs)
                ref_ids.append(pid)
        gps = self._coords(rows, split)
        ref_gps = None
        if gps is not None:
            ref_gps = np.zeros((len(refs), 2))
            ref_gps[[refs[sat] for _, _, sat, _ in rows]] = gps
        return EvalSet(
            [pano for _, pano, _, _ in rows],
            list(refs),
            query_labels=np.asarray([pid for pid, _, _, _ in rows], dtype=np.int64),
            reference_labels=np.asarray(ref_ids, dtype=np.int64),
            query_gps=gps,
            reference_gps=ref_gps,
            name=split,
        )

    def known_sizes(self) -> dict[str, int]:
        return {"train pairs": 35_532, "train references": 35_532, "test queries": 8_884, "test references": 8_884}


@geokit.hookimpl
def geokit_register_datasets(registry):
    registry.add(
        "cvusa",
        CVUSADataset,
        options=CVUSAOptions,
        summary="CVUSA (splits/*-19zl.csv, split_locations/all.csv): 35,532 train / 8,884 test pairs",
    )
