"""Dataset plugin ``university1652`` on a tiny copy of its real layout: pairs, labels, GPS, sets,
and a clear error naming the file and line for every bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from dataset_layouts import build, make_u1652, write_image

from geokit import GeokitError
from geokit.registry import create


def test_u1652_train_pairs_and_both_directions(tmp_path):
    make_u1652(tmp_path)
    ds = build("university1652", tmp_path)
    tr = ds.train_set()
    assert [Path(p).parent.name for p in tr.query_paths] == ["0001", "0001", "0002", "0002", "0003", "0003"]
    assert [Path(tr.reference_paths[j]).name for j in tr.pair_reference] == [
        "0001.jpg",
        "0001.jpg",
        "0002.jpg",
        "0002.jpg",
        "0003.jpg",
        "0003.jpg",
    ]
    assert tr.reference_gps is None

    es = ds.eval_set()  # drone2sat, official: the distractor building stays in the gallery
    assert es.multi_positive and es.query_labels.tolist() == [10, 10, 11, 11]
    assert es.reference_labels.tolist() == [10, 11, 12]
    assert [p.tolist() for p in es.positives()] == [[0], [0], [1], [1]]
    s4g = build("university1652", tmp_path, protocol="sample4geo").eval_set()
    assert s4g.reference_labels.tolist() == [10, 11]  # junk (no query) removed

    s2d = build("university1652", tmp_path, direction="sat2drone")
    es = s2d.eval_set()
    assert es.query_labels.tolist() == [10, 11] and es.reference_labels.tolist() == [10, 10, 11, 11, 12, 12]
    assert all("gallery_drone" in p for p in es.reference_paths)
    assert [p.tolist() for p in es.positives()] == [[0, 1], [2, 3]]
    assert build(
        "university1652", tmp_path, direction="sat2drone", protocol="sample4geo"
    ).eval_set().reference_labels.tolist() == [10, 10, 11, 11]
    assert (s2d.query_view, s2d.reference_view) == ("satellite", "drone")
    # training is drone -> satellite in both directions
    assert s2d.train_set().reference_paths == tr.reference_paths


def test_u1652_view_sizes_follow_the_image(tmp_path):
    make_u1652(tmp_path)
    ds = create(
        "dataset",
        "university1652",
        {"root": str(tmp_path), "direction": "sat2drone", "query_size": [16, 16], "reference_size": [8, 12]},
    )
    tr = ds.train_set()
    # a training drone image gets the drone size even when the caller asks for the query size
    assert ds.load_image(tr.query_paths[0], ds.query_size).shape == (8, 12, 3)
    assert ds.load_image(tr.reference_paths[0], ds.reference_size).shape == (16, 16, 3)
    assert create("dataset", "university1652", {"root": str(tmp_path)}).query_size == (384, 384)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("empty class", "train/drone/0002: class folder holds no image"),
        ("no satellite", "train/drone/0003: building 0003 has drone images but no satellite folder"),
        ("two tiles", "train/satellite/0001: expected one satellite tile per building, found 2"),
        ("not a number", "train/drone/abc: class folder names are building numbers"),
        ("no test folder", "folder not found: .*test/gallery_satellite"),
        ("query without gallery", "test/query_drone: 1 query buildings have no gallery folder"),
    ],
)
def test_u1652_bad_input(tmp_path, case, expected):
    make_u1652(tmp_path)
    if case == "empty class":
        for p in (tmp_path / "train/drone/0002").iterdir():
            p.unlink()
    elif case == "no satellite":
        shutil.rmtree(tmp_path / "train/satellite/0003")
    elif case == "two tiles":
        write_image(tmp_path / "train/satellite/0001/extra.jpg")
    elif case == "not a number":
        write_image(tmp_path / "train/drone/abc/image-01.jpeg")
    elif case == "no test folder":
        shutil.rmtree(tmp_path / "test/gallery_satellite")
    elif case == "query without gallery":
        shutil.rmtree(tmp_path / "test/gallery_satellite/0011")
    with pytest.raises(GeokitError, match=expected):
        ds = build("university1652", tmp_path)
        ds.train_set()
        ds.eval_set()


def test_the_tile_rotates_on_its_own(tmp_path):
    make_u1652(tmp_path)
    assert build("university1652", tmp_path)._augment.geometry == "independent"
