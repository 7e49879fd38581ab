"""Dataset ``pairs``: your own data as CSV files, no code needed.

``root/train.csv`` and ``root/test.csv`` (and optionally ``root/val.csv``) with a header row and
columns ``query,reference`` (image paths relative to ``root``) and optional ``lat,lon`` (degrees,
the pair's location). Rows that share a reference path share that reference. Evaluation ranks
the unique references of the split for every query of the split. Every other column whose
values are all numbers becomes a per-pair column of the training set, named by its header, for
losses that take per-pair data (e.g. ``loss.weight_column: weight``).
"""
from __future__ import annotations

import csv
import math
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

import geokit
from geokit.augment import PairAugment
from geokit.data import CrossViewDataset, EvalSet, TrainSet
from geokit.errors import GeokitError


class PairsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    root: Path = Field(..., description="folder with train.csv, test.csv (val.csv) and the images")
    query_size: tuple[PositiveInt, PositiveInt] = Field((140, 768), description="[height, width] of queries")
    reference_size: tuple[PositiveInt, PositiveInt] = Field((384, 384), description="[height, width] of references")
    query_type: Literal["panorama", "image"] = Field(
        "panorama", description="panorama: north-aligned 360° view (tile rotations become rolls); image: a photo")
    augment: bool = Field(True, description="Sample4Geo training augmentation")


@dataclass
class PairRows:
    """One parsed CSV split."""

    query: list[str]
    reference: list[str]
    gps: np.ndarray | None  # (n, 2) per row
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # numeric extra columns, per row


def read_pairs_csv(path: Path, root: Path) -> PairRows:
    """Parse and check one split file; every problem names the file and line."""
    if not path.is_file():
        raise GeokitError(f"dataset 'pairs': {path} not found (expected a CSV with a header row "
                          "and columns query,reference[,lat,lon])")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip() for f in (reader.fieldnames or [])]
        reader.fieldnames = fields
        for col in ("query", "reference"):
            if col not in fields:
                raise GeokitError(f"{path}: missing column '{col}' (found: {', '.join(fields) or 'nothing'}); "
                                  "the header must name query,reference[,lat,lon]")
        has_gps = "lat" in fields or "lon" in fields
        if has_gps and not ("lat" in fields and "lon" in fields):
            raise GeokitError(f"{path}: has only one of the columns lat/lon; give both or neither")
        query, reference, gps = [], [], []
        extra_names = [f for f in fields if f and f not in ("query", "reference", "lat", "lon")]
        extra: dict[str, list[float] | None] = {f: [] for f in extra_names}
        for n, row in enumerate(reader, start=2):
            for f in extra_names:  # a column stays per-pair data while every value is a number
                values, number = extra[f], _number(row.get(f))
                if values is not None and number is None:
                    extra[f] = None
                elif values is not None:
                    values.append(number)
            q, r = (row.get("query") or "").strip(), (row.get("reference") or "").strip()
            if not q or not r:
                raise GeokitError(f"{path} line {n}: empty query or reference path")
            for p in (q, r):
                if not (root / p).is_file():
                    raise GeokitError(f"{path} line {n}: image not found: {root / p}")
            query.append(str(root / q))
            reference.append(str(root / r))
            if has_gps:
                gps.append((_coord(row.get("lat"), "lat", 90, path, n), _coord(row.get("lon"), "lon", 180, path, n)))
    if not query:
        raise GeokitError(f"{path}: no rows after the header")
    skipped = [f for f, v in extra.items() if v is None]
    if skipped:
        logging.getLogger("geokit").info("%s: columns %s are not all numbers; they are not per-pair data",
                                         path, ", ".join(skipped))
    columns = {f: np.asarray(v, dtype=np.float64) for f, v in extra.items() if v is not None}
    return PairRows(query, reference, np.asarray(gps, dtype=np.float64) if has_gps else None, columns)


def _number(raw: str | None) -> float | None:
    try:
        value = float((raw or "").strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _coord(raw: str | None, name: str, bound: float, path: Path, line: int) -> float:
    try:
        value = float((raw or "").strip())
    except ValueError:
        raise GeokitError(f"{path} line {line}: {name} {raw!r} is not a number") from None
    if not math.isfinite(value) or abs(value) > bound:
        raise GeokitError(f"{path} line {line}: {name} {value} is outside [-{bound:g}, {bound:g}]")
    return value


def unique_references(rows: PairRows, path: Path) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """Unique reference paths (first-seen order), the row -> reference map, and per-reference GPS."""
    index: dict[str, int] = {}
    pair_ref = np.empty(len(rows.reference), dtype=np.int64)
    first_row: list[int] = []
    for i, r in enumerate(rows.reference):
        j = index.setdefault(r, len(index))
        if j == len(first_row):
            first_row.append(i)
        pair_ref[i] = j
    gps = None
    if rows.gps is not None:
        gps = rows.gps[first_row]
        bad = np.flatnonzero(np.abs(rows.gps - gps[pair_ref]).max(1) > 1e-9)
        if len(bad):
            i = int(bad[0])
            raise GeokitError(f"{path} line {i + 2}: reference {rows.reference[i]} has lat/lon "
                              f"{tuple(rows.gps[i])} here but {tuple(gps[pair_ref[i]])} on line "
                              f"{first_row[pair_ref[i]] + 2}")
    return list(index), pair_ref, gps


class PairsDataset(CrossViewDataset):
    """Pairs listed in CSV files under one folder."""

    def __init__(self, options: PairsOptions):
        self.options = options
        self.root = Path(options.root).expanduser()
        if not self.root.is_dir():
            raise GeokitError(f"dataset.root: folder not found: {self.root}")
        self.query_size = tuple(options.query_size)
        self.reference_size = tuple(options.reference_size)
        self.query_view = "ground" if options.query_type == "panorama" else "query"
        self.reference_view = "aerial"
        self.splits = ("val", "test") if (self.root / "val.csv").is_file() else ("test",)
        geometry = "panorama" if options.query_type == "panorama" else "independent"
        self._augment = PairAugment(geometry=geometry) if options.augment else None

    def _rows(self, split: str) -> tuple[PairRows, Path]:
        path = self.root / f"{split}.csv"
        return read_pairs_csv(path, self.root), path

    def train_set(self) -> TrainSet:
        rows, path = self._rows("train")
        refs, pair_ref, gps = unique_references(rows, path)
        return TrainSet(rows.query, refs, pair_ref, reference_gps=gps, columns=rows.extra)

    def eval_set(self, split: str | None = None) -> EvalSet:
        split = self.check_split(split)
        rows, path = self._rows(split)
        refs, pair_ref, gps = unique_references(rows, path)
        return EvalSet(rows.query, refs, query_labels=pair_ref, reference_labels=np.arange(len(refs)),
                       query_gps=rows.gps, reference_gps=gps, name=split)

    def augment_pair(self, query, reference, rng):
        return self._augment(query, reference, rng) if self._augment else (query, reference)


@geokit.hookimpl
def geokit_register_datasets(registry):
    registry.add("pairs", PairsDataset, options=PairsOptions,
                 summary="your own pairs: train.csv/test.csv with query,reference[,lat,lon]")
