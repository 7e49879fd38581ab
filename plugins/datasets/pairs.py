"""Dataset ``pairs``: your own data as CSV files, no code needed.

``root/train.csv`` and ``root/test.csv`` (and optionally ``root/val.csv``) with a header row and
columns ``query,reference`` (image paths relative to ``root``) and optional ``lat,lon`` (degrees,
the pair's location). Rows that share a reference path share that reference. Evaluation ranks
the unique references of the split for every query of the split. Every other column whose
values are all numbers becomes a per-pair column of the training set, named by its header, for
losses that take per-pair data (e.g. ``loss.weight_column: weight``).
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

import geokit
from geokit.augment import Geometry, PairAugment
from geokit.data import CrossViewDataset, EvalSet, TrainSet, parse_coordinate, read_csv
from geokit.errors import GeokitError
from geokit.problems import collecting_active, problem


class PairsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    root: Path = Field(..., description="folder with train.csv, test.csv (val.csv) and the images")
    query_size: tuple[PositiveInt, PositiveInt] = Field((140, 768), description="[height, width] of queries")
    reference_size: tuple[PositiveInt, PositiveInt] = Field((384, 384), description="[height, width] of references")
    query_type: Literal["panorama", "image"] = Field(
        "panorama", description="panorama: north-aligned 360° view (tile rotations become rolls); image: a photo"
    )
    augment: bool = Field(True, description="Sample4Geo training augmentation")
    allow_outside_root: bool = Field(
        False,
        description="accept CSV image paths that are absolute or "
        "climb out of root with '..' (refused by default: paths stay in root)",
    )


@dataclass
class PairRows:
    """One parsed CSV split."""

    query: list[str]
    reference: list[str]
    gps: np.ndarray | None  # (n, 2) per row
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # numeric extra columns, per row
    lines: list[int] | None = None  # the CSV line of each row


def outside_root(rel: str) -> bool:
    """Whether a CSV path is absolute or climbs out of the dataset root (lexically)."""
    norm = os.path.normpath(rel)
    return (
        os.path.isabs(rel)
        or os.path.isabs(norm)
        or norm == ".."
        or norm.startswith(".." + os.sep)
        or bool(re.match(r"^[A-Za-z]:[\\/]", rel))
    )


def read_pairs_csv(path: Path, root: Path, allow_outside_root: bool = False) -> PairRows:
    """Parse and check one split file; every problem names the file and line.

    Under ``geokit datasets verify`` row problems are collected (the row is skipped) instead of
    stopping at the first."""
    if not path.is_file():
        raise GeokitError(
            f"dataset 'pairs': {path} not found (expected a CSV with a header row "
            "and columns query,reference[,lat,lon])"
        )
    table = read_csv(path, ("query", "reference"), header="query,reference[,lat,lon]")
    fields, has_gps = table.fields, table.has_latlon
    query, reference, gps, lines = [], [], [], []
    seen: dict[tuple[str, str], int] = {}
    extra_names = [f for f in fields if f and f not in ("query", "reference", "lat", "lon")]
    extra: dict[str, list[float] | None] = {f: [] for f in extra_names}
    for n, row in table.rows:  # n: the CSV line this row ends on (quoted fields may span lines)
        q, r = (row.get("query") or "").strip(), (row.get("reference") or "").strip()
        if not q or not r:
            problem("empty query or reference path", file=path, line=n, category="malformed row")
            continue
        escapes = [p for p in (q, r) if outside_root(p)]
        if escapes and not allow_outside_root:
            problem(
                f"path {escapes[0][:200]} is absolute or leaves the dataset root {root}; paths are "
                "relative to the root (set dataset.allow_outside_root=true to accept it)",
                file=path,
                line=n,
                category="path outside root",
                path=escapes[0],
            )
            continue
        missing = [p for p in (q, r) if not (root / p).is_file()]
        if missing:
            problem(
                f"image not found: {root / missing[0]}",
                file=path,
                line=n,
                category="missing image",
                path=str(root / missing[0]),
            )
            continue
        if has_gps:
            lat = _coord(row.get("lat"), "lat", 90, path, n)
            lon = _coord(row.get("lon"), "lon", 180, path, n)
            if lat is None or lon is None:
                continue
            gps.append((lat, lon))
        if (q, r) in seen:
            problem(
                f"duplicate row: the same query and reference as line {seen[(q, r)]} (counted twice "
                "in training and evaluation)",
                file=path,
                line=n,
                category="suspicious data",
                warning=True,
            )
        seen.setdefault((q, r), n)
        if os.path.normpath(q) == os.path.normpath(r):
            problem(
                f"the query is its own reference ({q[:200]}): a trivial match",
                file=path,
                line=n,
                category="suspicious data",
                warning=True,
            )
        for f in extra_names:  # a column stays per-pair data while every value is a number
            values, number = extra[f], _number(row.get(f))
            if values is not None and number is None:
                extra[f] = None
            elif values is not None and number is not None:
                values.append(number)
        query.append(str(root / q))
        reference.append(str(root / r))
        lines.append(n)
    if not query and not collecting_active():
        raise GeokitError(f"{path}: no rows after the header")
    skipped = [f for f, v in extra.items() if v is None]
    if skipped:
        logging.getLogger("geokit").info(
            "%s: columns %s are not all numbers; they are not per-pair data", path, ", ".join(skipped)
        )
    columns = {f: np.asarray(v, dtype=np.float64) for f, v in extra.items() if v is not None}
    return PairRows(
        query, reference, np.asarray(gps, dtype=np.float64).reshape(-1, 2) if has_gps else None, columns, lines
    )


def _number(raw: str | None) -> float | None:
    try:
        value = float((raw or "").strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _coord(raw: str | None, name: str, bound: float, path: Path, line: int) -> float | None:
    try:
        return parse_coordinate(raw, name, bound)
    except ValueError as exc:
        problem(str(exc), file=path, line=line, category="malformed row")
        return None


def _line(lines: list[int] | None, row: int) -> int:
    return lines[row] if lines else row + 2


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
            here, there = rows.gps[i].tolist(), gps[pair_ref[i]].tolist()
            raise GeokitError(
                f"{path} line {_line(rows.lines, i)}: reference {rows.reference[i]} has lat/lon "
                f"({here[0]}, {here[1]}) here but ({there[0]}, {there[1]}) on line "
                f"{_line(rows.lines, first_row[pair_ref[i]])}"
            )
    return list(index), pair_ref, gps


def report_shared_references(pair_ref: np.ndarray, path: Path, split: str, lines: list[int] | None = None) -> None:
    """Warn when many evaluation queries share one reference: recall then says little (one good
    tile answers them all), and it usually means a wrong reference column."""
    if len(pair_ref) < 10:
        return
    counts = np.bincount(pair_ref)
    top = int(counts.argmax())
    if counts[top] >= max(10, len(pair_ref) // 10):
        problem(
            f"{counts[top]:,} of the {len(pair_ref):,} {split} queries share one reference (the one of "
            f"line {_line(lines, int(np.flatnonzero(pair_ref == top)[0]))}): is the reference column right?",
            file=path,
            category="suspicious data",
            warning=True,
        )


class PairsDataset(CrossViewDataset):
    """Pairs listed in CSV files under one folder."""

    def __init__(self, options: PairsOptions):
        self.options = options
        self.root = Path(options.root).expanduser()
        if not self.root.is_dir():
            raise GeokitError(f"dataset.root: folder not found: {self.root}")
        self.query_size = options.query_size  # a tuple already (pydantic)
        self.reference_size = options.reference_size
        self.query_view = "ground" if options.query_type == "panorama" else "query"
        self.reference_view = "aerial"
        self.splits = ("val", "test") if (self.root / "val.csv").is_file() else ("test",)
        geometry: Geometry = "panorama" if options.query_type == "panorama" else "independent"
        self._augment = PairAugment(geometry=geometry) if options.augment else None

    def _rows(self, split: str) -> tuple[PairRows, Path]:
        path = self.root / f"{split}.csv"
        return read_pairs_csv(path, self.root, self.options.allow_outside_root), path

    def train_set(self) -> TrainSet:
        rows, path = self._rows("train")
        refs, pair_ref, gps = unique_references(rows, path)
        return TrainSet(rows.query, refs, pair_ref, reference_gps=gps, columns=rows.extra)

    def eval_set(self, split: str | None = None) -> EvalSet:
        split = self.check_split(split)
        rows, path = self._rows(split)
        refs, pair_ref, gps = unique_references(rows, path)
        report_shared_references(pair_ref, path, split, rows.lines)
        return EvalSet(
            rows.query,
            refs,
            query_labels=pair_ref,
            reference_labels=np.arange(len(refs)),
            query_gps=rows.gps,
            reference_gps=gps,
            name=split,
        )

    def augment_pair(self, query, reference, rng):
        return self._augment(query, reference, rng) if self._augment else (query, reference)


@geokit.hookimpl
def geokit_register_datasets(registry):
    registry.add(
        "pairs",
        PairsDataset,
        options=PairsOptions,
        summary="your own pairs: train.csv/test.csv with query,reference[,lat,lon]",
    )
