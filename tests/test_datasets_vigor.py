"""Dataset plugin ``vigor`` on a tiny copy of its real layout: pairs, labels, GPS, sets,
and a clear error naming the file and line for every bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from dataset_layouts import VIGOR_CITIES, build, make_vigor

from geokit import GeokitError


def _sat_path(root, city, name, official=False):
    return str(root / city / "satellite" / name) if official else str(root / "satellite" / city / name)


@pytest.mark.parametrize("official", [False, True])
def test_vigor_same_area(tmp_path, official):
    info = make_vigor(tmp_path, official_layout=official)
    ds = build("vigor", tmp_path)
    gallery = [_sat_path(tmp_path, c, s[0], official) for c in VIGOR_CITIES for s in info["sats"][c]]
    gindex = {p: j for j, p in enumerate(gallery)}

    tr = ds.train_set()
    train_rows = [(c, r) for c in VIGOR_CITIES for r in info[c][:2]]  # same_area_balanced_train
    assert [Path(p).name for p in tr.query_paths] == [r[0] for _, r in train_rows]
    pos_paths = [_sat_path(tmp_path, c, info["sats"][c][r[1]][0], official) for c, r in train_rows]
    assert [tr.reference_paths[j] for j in tr.pair_reference] == pos_paths
    assert len(tr.reference_paths) == len(set(pos_paths))  # references: the unique positive tiles
    assert tr.pair_conflicts is None  # as released: semi-positives may share a batch (FIDELITY.md)
    conf = build("vigor", tmp_path, semi_positive_conflicts=True).train_set().pair_conflicts
    for i, (c, r) in enumerate(train_rows):  # opt-in: semi-positives become batch conflicts
        semi = [_sat_path(tmp_path, c, info["sats"][c][s][0], official) for s in r[2]]
        expect = [tr.reference_paths.index(p) if p in tr.reference_paths else -1 for p in semi]
        assert conf[i].tolist() == expect
    assert (conf >= 0).any() and (conf == -1).any()
    for j, p in enumerate(tr.reference_paths):  # GPS from satellite_<lat>_<lon>.png
        lat, lon = (float(x) for x in Path(p).stem.split("_")[1:])
        np.testing.assert_allclose(tr.reference_gps[j], [lat, lon])

    es = ds.eval_set()
    assert es.reference_paths == gallery  # all tiles of the four cities, in list order
    test_rows = [(c, r) for c in VIGOR_CITIES for r in info[c][2:]]
    assert [Path(p).name for p in es.query_paths] == [r[0] for _, r in test_rows]
    assert es.query_labels.tolist() == [
        gindex[_sat_path(tmp_path, c, info["sats"][c][r[1]][0], official)] for c, r in test_rows
    ]
    assert es.semi_positives.tolist() == [
        [gindex[_sat_path(tmp_path, c, info["sats"][c][s][0], official)] for s in r[2]] for c, r in test_rows
    ]
    np.testing.assert_allclose(es.query_gps, [(r[3], r[4]) for _, r in test_rows], atol=1e-6)
    assert es.positives().tolist() == es.query_labels.tolist()


def test_vigor_cross_area(tmp_path):
    info = make_vigor(tmp_path)
    ds = build("vigor", tmp_path, mode="cross")
    tr = ds.train_set()
    assert [Path(p).name for p in tr.query_paths] == [r[0] for c in ("NewYork", "Seattle") for r in info[c]]
    assert {Path(p).parent.name for p in tr.reference_paths} == {"NewYork", "Seattle"}
    es = ds.eval_set()
    assert es.reference_paths == [
        _sat_path(tmp_path, c, s[0]) for c in ("Chicago", "SanFrancisco") for s in info["sats"][c]
    ]
    assert [Path(p).name for p in es.query_paths] == [r[0] for c in ("Chicago", "SanFrancisco") for r in info[c]]


@pytest.mark.parametrize(
    "case, expected",
    [
        ("city missing", "city folder missing: .*splits/Seattle"),
        (
            "label file missing",
            "splits/NewYork/same_area_balanced_train.txt \\(the train label file of NewYork\\) not found",
        ),
        ("twelve columns", "splits/Chicago/same_area_balanced_train.txt line 2: expected 13 whitespace-separated"),
        (
            "unknown tile",
            "splits/Chicago/same_area_balanced_train.txt line 1: semi-positive 2 tile nope.png \\(column 8\\)",
        ),
        ("bad offset", "splits/Chicago/same_area_balanced_train.txt line 1: column 3 \\(a pixel offset\\)"),
        ("missing pano", "splits/Chicago/same_area_balanced_train.txt line 1: image not found"),
        ("missing tile", "splits/Chicago/satellite_list.txt line 2: image not found"),
        ("no image folder", "ground images of SanFrancisco not found"),
    ],
)
def test_vigor_bad_input(tmp_path, case, expected):
    info = make_vigor(tmp_path)
    label = tmp_path / "splits/Chicago/same_area_balanced_train.txt"
    lines = label.read_text().splitlines(keepends=True)
    if case == "city missing":
        shutil.rmtree(tmp_path / "splits/Seattle")
    elif case == "label file missing":
        (tmp_path / "splits/NewYork/same_area_balanced_train.txt").unlink()
    elif case == "twelve columns":
        lines[1] = " ".join(lines[1].split()[:12]) + "\n"
    elif case == "unknown tile":
        cols = lines[0].split()
        cols[7] = "nope.png"
        lines[0] = " ".join(cols) + "\n"
    elif case == "bad offset":
        cols = lines[0].split()
        cols[2] = "left"
        lines[0] = " ".join(cols) + "\n"
    elif case == "missing pano":
        (tmp_path / "ground/Chicago" / info["Chicago"][0][0]).unlink()
    elif case == "missing tile":
        (tmp_path / "satellite/Chicago" / info["sats"]["Chicago"][1][0]).unlink()
    elif case == "no image folder":
        shutil.rmtree(tmp_path / "ground/SanFrancisco")
    label.write_text("".join(lines))
    with pytest.raises(GeokitError, match=expected):
        build("vigor", tmp_path).train_set()
