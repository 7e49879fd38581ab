"""Tiny on-disk layouts of the bundled datasets, shared by the tests (a helper module, no tests).

The four benchmarks' builders write the real file formats (CSV/TXT exactly as released, a real
MATLAB v5 ``ACT_data.mat`` via scipy with the struct shapes of the released file) and tiny
images, and return what they wrote so tests can compare the loaders' output with the files.

:data:`LAYOUTS` maps every bundled dataset name to a function that writes its tiny layout under
a folder and returns the dataset options that read it (the ``dataset_layout`` fixture in
``conftest.py``; ``test_conformance.py`` runs ``check_dataset`` on each).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

VIGOR_CITIES = ("Chicago", "NewYork", "SanFrancisco", "Seattle")


def write_image(path: Path, size: tuple[int, int] = (8, 16), seed: int = 0) -> None:
    """A tiny RGB image (height, width); JPEG or PNG by suffix."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)


# ------------------------------------------------------------------------------------ CVUSA


def make_cvusa(root: Path, n_train: int = 6, n_test: int = 4, gps: bool = True) -> dict:
    """splits/train-19zl.csv, splits/val-19zl.csv, split_locations/all.csv, bingmap/19, streetview/panos."""
    root = Path(root)
    ids = {"train": list(range(1, n_train + 1)), "test": list(range(n_train + 1, n_train + n_test + 1))}
    (root / "splits").mkdir(parents=True, exist_ok=True)
    for split, fname in (("train", "train-19zl.csv"), ("test", "val-19zl.csv")):
        lines = []
        for i in ids[split]:
            sat, pano = f"bingmap/19/{i:07d}.jpg", f"streetview/panos/{i:07d}.jpg"
            write_image(root / sat, (8, 8), seed=i)
            write_image(root / pano, (4, 16), seed=1000 + i)
            lines.append(f"{sat},{pano},streetview/annotations/{i:07d}.png\n")
        (root / "splits" / fname).write_text("".join(lines))
    coords = {}
    if gps:
        (root / "split_locations").mkdir(exist_ok=True)
        rows = []
        for i in range(1, n_train + n_test + 3):  # a few more rows than ids, like the real file
            lat, lon = 30.0 + 0.5 * i, -100.0 + 0.25 * i
            coords[i] = (lat, lon)
            rows.append(f"{lat + 0.001},{lon + 0.001},{lat},{lon},{i % 3}\n")
        (root / "split_locations" / "all.csv").write_text("".join(rows))
    return {"ids": ids, "coords": coords}


# ------------------------------------------------------------------------------------ CVACT


def cvact_id(i: int) -> str:
    """22-character ids with '_' and '-' like the real Google pano ids."""
    return f"_x-{i:019d}"


def make_cvact(
    root: Path, n_train: int = 5, n_val: int = 3, n_test: int = 4, *, field_names=None, write_mat: bool = True
) -> dict:
    """ACT_data.mat (panoIds char matrix, utm, trainSet/valSet/valSetAll structs with 1-based
    column vectors) + ANU_data_small and ANU_data_test images."""
    import scipy.io

    root = Path(root)
    n_all = n_train + n_val + 2  # two ids in no split
    ids = [cvact_id(i) for i in range(n_all)]
    rng = np.random.default_rng(0)
    order = rng.permutation(n_all)
    train_idx, val_idx = order[:n_train], order[n_train : n_train + n_val]
    utm = np.c_[692_000.0 + 100.0 * np.arange(n_all), 6_090_000.0 + 50.0 * np.arange(n_all)]
    tr_f, val_f = field_names or (("trainNum", "trainInd"), ("valNum", "valInd"))
    if write_mat:
        root.mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(
            root / "ACT_data.mat",
            {
                "panoIds": np.array(ids),  # saved as a MATLAB char matrix, like the release
                "utm": utm,
                "trainSet": {tr_f[0]: float(n_train), tr_f[1]: (train_idx + 1.0).reshape(-1, 1)},
                "valSet": {val_f[0]: float(n_val), val_f[1]: (val_idx + 1.0).reshape(-1, 1)},
                "valSetAll": {"valNum": float(n_val), "valInd": (val_idx + 1.0).reshape(-1, 1)},
            },
        )
    for k, i in enumerate(np.r_[train_idx, val_idx]):
        write_image(root / "ANU_data_small/streetview" / f"{ids[i]}_grdView.jpg", (4, 16), seed=k)
        write_image(root / "ANU_data_small/satview_polish" / f"{ids[i]}_satView_polish.jpg", (8, 8), seed=100 + k)
    test_ids = sorted(f"t{i:021d}" for i in range(n_test))
    for k, t in enumerate(test_ids):
        write_image(root / "ANU_data_test/streetview" / f"{t}_grdView.jpg", (4, 16), seed=200 + k)
        write_image(root / "ANU_data_test/satview_polish" / f"{t}_satView_polish.jpg", (8, 8), seed=300 + k)
    write_image(root / "ANU_data_test/streetview" / "lonely00000000000000000_grdView.jpg", (4, 16))
    return {"ids": ids, "train_idx": train_idx, "val_idx": val_idx, "utm": utm, "test_ids": test_ids}


# ------------------------------------------------------------------------------------ VIGOR


def make_vigor(root: Path, *, official_layout: bool = False, sats_per_city: int = 5, panos_per_city: int = 4) -> dict:
    """splits/<city>/{satellite_list,same_area_balanced_train,same_area_balanced_test,
    pano_label_balanced}.txt (13 columns), ground/<city>, satellite/<city>."""
    root = Path(root)
    out: dict = {"sats": {}, "rows": {}}
    for c, city in enumerate(VIGOR_CITIES):
        split_dir = root / "splits" / city
        split_dir.mkdir(parents=True, exist_ok=True)
        sat_dir = root / city / "satellite" if official_layout else root / "satellite" / city
        pano_dir = root / city / "panorama" if official_layout else root / "ground" / city
        sats = []
        for j in range(sats_per_city):
            lat, lon = 40.0 + c + 0.001 * j, -80.0 - c - 0.002 * j
            name = f"satellite_{lat:.10f}_{lon:.10f}.png"
            write_image(sat_dir / name, (8, 8), seed=10 * c + j)
            sats.append((name, lat, lon))
        (split_dir / "satellite_list.txt").write_text("".join(f"{s[0]}\n" for s in sats))
        rows = []
        for k in range(panos_per_city):
            pos = k % sats_per_city
            semis = [(pos + d) % sats_per_city for d in (1, 2, 3)]
            lat, lon = sats[pos][1] + 1e-5, sats[pos][2] + 1e-5
            pano = f"p{c}x{k}AbC-dEf_gH,{lat:.6f},{lon:.6f},.jpg"
            write_image(pano_dir / pano, (4, 16), seed=500 + 10 * c + k)
            cols = [pano, sats[pos][0], "12.5", "-3.25"]
            for s in semis:
                cols += [sats[s][0], "100.0", "200.0"]
            rows.append((pano, pos, semis, lat, lon))
            out["rows"].setdefault(city, []).append(("  ".join(cols)) + "\n")
        out["sats"][city] = sats
        out[city] = rows
        half = panos_per_city // 2
        lines = out["rows"][city]
        (split_dir / "same_area_balanced_train.txt").write_text("".join(lines[:half]))
        (split_dir / "same_area_balanced_test.txt").write_text("".join(lines[half:]))
        (split_dir / "pano_label_balanced.txt").write_text("".join(lines))
    return out


# ------------------------------------------------------------------------------ University-1652


def make_u1652(root: Path) -> dict:
    """train/{drone,satellite}/<class>/, test/{query_drone,gallery_satellite,query_satellite,gallery_drone}/<class>/."""
    root = Path(root)
    train = ["0001", "0002", "0003"]
    query = ["0010", "0011"]
    distractor = ["0012"]
    s = 0
    for cls in train:
        for k in range(2):
            write_image(root / "train/drone" / cls / f"image-{k + 1:02d}.jpeg", (8, 8), seed=(s := s + 1))
        write_image(root / "train/satellite" / cls / f"{cls}.jpg", (8, 8), seed=(s := s + 1))
    for cls in query:
        for k in range(2):
            write_image(root / "test/query_drone" / cls / f"image-{k + 1:02d}.jpeg", (8, 8), seed=(s := s + 1))
        write_image(root / "test/query_satellite" / cls / f"{cls}.jpg", (8, 8), seed=(s := s + 1))
    for cls in query + distractor:
        write_image(root / "test/gallery_satellite" / cls / f"{cls}.jpg", (8, 8), seed=(s := s + 1))
        for k in range(2):
            write_image(root / "test/gallery_drone" / cls / f"image-{k + 1:02d}.jpeg", (8, 8), seed=(s := s + 1))
    return {"train": train, "query": query, "distractor": distractor}


# ------------------------------------------------------------------------------------ helpers

SMALL = {"query_size": [8, 32], "reference_size": [8, 8]}


def build(name: str, root: Path, **options):
    """The registered dataset ``name`` on ``root`` with tiny view sizes."""
    from geokit.registry import create

    return create("dataset", name, {"root": str(root), **SMALL, **options})


# ------------------------------------------------------------------------------ every dataset

# A synthetic world small enough to generate in a few seconds (tests/test_synthetic.py has its own).
SYNTHETIC_TINY: dict[str, Any] = {
    "seed": 3,
    "map_size": 256,
    "locations": 60,
    "spacing": 10.0,
    "tile_metres": 40.0,
    "query_size": [16, 64],
    "reference_size": [32, 32],
    "test_fraction": 0.25,
    "val_fraction": 0.15,
}


def _benchmark(make: Callable[[Path], Any]) -> Callable[[Path], dict[str, Any]]:
    def layout(root: Path) -> dict[str, Any]:
        make(root)
        return {"root": str(root), **SMALL}

    return layout


def _pairs(root: Path) -> dict[str, Any]:
    from geokit.testing import make_pairs_dataset

    make_pairs_dataset(root, n_train=8, n_test=6, val=True)
    return {"root": str(root), "query_size": [32, 128], "reference_size": [32, 32]}


def _synthetic(root: Path) -> dict[str, Any]:
    return {"root": str(root), **SYNTHETIC_TINY}  # the dataset generates its world on first use


LAYOUTS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "cvusa": _benchmark(make_cvusa),
    "cvact": _benchmark(make_cvact),
    "vigor": _benchmark(make_vigor),
    "university1652": _benchmark(make_u1652),
    "pairs": _pairs,
    "synthetic": _synthetic,
}
