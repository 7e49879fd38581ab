"""Reference tiles to index: a CSV ``path,lat,lon``, a folder of images, or a dataset's split."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geokit.errors import GeokitError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp")


@dataclass
class References:
    """Reference tiles to index: image paths and lat/lon (NaN when unknown)."""

    paths: list[str]
    latlon: np.ndarray
    source: str = ""
    dataset: Any = None  # a CrossViewDataset whose load_image decodes them
    extra: dict[str, Any] = field(default_factory=dict)


def read_references(source: str | Path) -> References:
    """A CSV with columns ``path,lat,lon`` (paths relative to the CSV's folder), a folder holding
    ``references.csv`` (or exactly one ``.csv``), or a folder of images (no locations)."""
    source = Path(source)
    if source.is_dir():
        csvs = sorted(source.glob("*.csv"))
        named = source / "references.csv"
        if named.is_file():
            return _read_reference_csv(named)
        if len(csvs) == 1:
            return _read_reference_csv(csvs[0])
        if len(csvs) > 1:
            raise GeokitError(
                f"{source} holds several CSV files ({', '.join(c.name for c in csvs[:5])}); "
                "name the one listing the tiles (path,lat,lon) or call it references.csv"
            )
        images = sorted(str(p) for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise GeokitError(f"{source} holds no CSV and no images ({', '.join(IMAGE_SUFFIXES)})")
        return References(images, np.full((len(images), 2), np.nan), str(source))
    if source.is_file():
        return _read_reference_csv(source)
    raise GeokitError(f"references not found: {source} (give a CSV path,lat,lon or a folder)")


def _read_reference_csv(path: Path) -> References:
    root = path.parent
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip() for f in (reader.fieldnames or [])]
        reader.fieldnames = fields
        if "path" not in fields:
            raise GeokitError(
                f"{path}: missing column 'path' (found: {', '.join(fields) or 'nothing'}); "
                "the header must name path,lat,lon"
            )
        has_gps = "lat" in fields and "lon" in fields
        if ("lat" in fields) != ("lon" in fields):
            raise GeokitError(f"{path}: has only one of the columns lat/lon; give both or neither")
        paths, coords = [], []
        for line, row in enumerate(reader, start=2):
            p = (row.get("path") or "").strip()
            if not p:
                raise GeokitError(f"{path} line {line}: empty path")
            full = root / p
            if not full.is_file():
                raise GeokitError(f"{path} line {line}: image not found: {full}")
            paths.append(str(full))
            if has_gps:
                try:
                    lat, lon = float(row["lat"]), float(row["lon"])
                except (TypeError, ValueError):
                    raise GeokitError(
                        f"{path} line {line}: lat/lon {row.get('lat')!r}, {row.get('lon')!r} are not numbers"
                    ) from None
                if not (abs(lat) <= 90 and abs(lon) <= 180):
                    raise GeokitError(f"{path} line {line}: lat/lon ({lat}, {lon}) out of range")
                coords.append((lat, lon))
    if not paths:
        raise GeokitError(f"{path}: no rows after the header")
    latlon = np.asarray(coords, dtype=np.float64) if has_gps else np.full((len(paths), 2), np.nan)
    return References(paths, latlon, str(path))


def dataset_references(
    config_path: str | Path,
    overrides: Sequence[str] = (),
    split: str | None = None,
) -> References:
    """The reference set of a configured dataset's evaluation split (and its lat/lon if known)."""
    from geokit import config
    from geokit.registry import create

    cfg = config.load(config_path, list(overrides), require=("dataset",))
    ds = create("dataset", cfg.names["dataset"], cfg.dataset)
    ds.name = cfg.names["dataset"]
    es = ds.eval_set(ds.check_split(split or cfg.eval.split))
    gps = es.reference_gps
    latlon = (
        np.asarray(gps, dtype=np.float64).reshape(-1, 2)
        if gps is not None
        else np.full((len(es.reference_paths), 2), np.nan)
    )
    return References(list(es.reference_paths), latlon, f"{config_path} ({ds.name} {es.name})", dataset=ds)
