"""Reference tiles to index: a CSV ``path,lat,lon``, a folder of images, or a dataset's split."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geokit.data import parse_coordinate, read_csv
from geokit.errors import GeokitError
from geokit.images import IMAGE_SUFFIXES


@dataclass
class References:
    """Reference tiles to index: image paths and lat/lon (NaN when unknown)."""

    paths: list[str]
    latlon: np.ndarray
    source: str = ""
    dataset: Any = None  # a CrossViewDataset whose load_image decodes them


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
    table = read_csv(path, ("path",), header="path,lat,lon")
    root = path.parent
    paths, coords = [], []
    for line, row in table.rows:
        p = (row.get("path") or "").strip()
        if not p:
            raise GeokitError(f"{path} line {line}: empty path")
        full = root / p
        if not full.is_file():
            raise GeokitError(f"{path} line {line}: image not found: {full}")
        paths.append(str(full))
        if table.has_latlon:
            try:
                coords.append(
                    (parse_coordinate(row.get("lat"), "lat", 90), parse_coordinate(row.get("lon"), "lon", 180))
                )
            except ValueError as exc:
                raise GeokitError(f"{path} line {line}: {exc}") from None
    if not paths:
        raise GeokitError(f"{path}: no rows after the header")
    latlon = np.asarray(coords, dtype=np.float64) if table.has_latlon else np.full((len(paths), 2), np.nan)
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
