"""Dataset plugin ``cvusa`` on a tiny copy of its real layout: pairs, labels, GPS, sets,
and a clear error naming the file and line for every bad input."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from dataset_layouts import build, make_cvusa

from geokit import GeokitError
from geokit.registry import create


def test_cvusa_pairs_labels_gps(tmp_path):
    info = make_cvusa(tmp_path)
    ds = build("cvusa", tmp_path)
    tr = ds.train_set()
    assert tr.query_paths == [str(tmp_path / f"streetview/panos/{i:07d}.jpg") for i in info["ids"]["train"]]
    assert tr.reference_paths == [str(tmp_path / f"bingmap/19/{i:07d}.jpg") for i in info["ids"]["train"]]
    assert tr.pair_reference.tolist() == list(range(6))
    # columns 2-3 of row id-1 of split_locations/all.csv, as the original GPS sampler
    np.testing.assert_allclose(tr.reference_gps, [info["coords"][i] for i in info["ids"]["train"]])
    es = ds.eval_set()
    assert es.name == "test" and ds.splits == ("test",)
    assert es.query_labels.tolist() == info["ids"]["test"] == es.reference_labels.tolist()
    assert es.positives().tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(es.query_gps, [info["coords"][i] for i in info["ids"]["test"]])
    assert es.semi_positives is None and not es.multi_positive
    assert ds.query_size == (8, 32)
    assert create("dataset", "cvusa", {"root": str(tmp_path)}).query_size == (140, 768)  # paper default


def test_cvusa_without_locations_has_no_gps(tmp_path, caplog):
    make_cvusa(tmp_path, gps=False)
    with caplog.at_level(logging.WARNING, logger="geokit"):
        tr = build("cvusa", tmp_path).train_set()
    assert tr.reference_gps is None and "split_locations/all.csv" in caplog.text


@pytest.mark.parametrize(
    "case, expected",
    [
        ("no split file", "splits/train-19zl.csv"),
        ("missing image", "splits/train-19zl.csv line 3: image not found"),
        ("one column", "splits/train-19zl.csv line 2: expected 'satellite,panorama"),
        ("not a number", "splits/train-19zl.csv line 1: satellite file name 'abc.jpg' is not a number"),
        ("gps row missing", "splits/train-19zl.csv line 6: id 6 has no coordinates"),
        ("gps malformed", "split_locations/all.csv line 2: ground latitude 'north' is not a number"),
    ],
)
def test_cvusa_bad_input(tmp_path, case, expected):
    make_cvusa(tmp_path)
    csv_path = tmp_path / "splits/train-19zl.csv"
    lines = csv_path.read_text().splitlines(keepends=True)
    if case == "no split file":
        csv_path.unlink()
    elif case == "missing image":
        (tmp_path / "streetview/panos/0000003.jpg").unlink()
    elif case == "one column":
        lines[1] = "bingmap/19/0000002.jpg\n"
    elif case == "not a number":
        lines[0] = lines[0].replace("bingmap/19/0000001.jpg", "bingmap/19/abc.jpg")
    elif case == "gps row missing":
        (tmp_path / "split_locations/all.csv").write_text(
            "".join((tmp_path / "split_locations/all.csv").read_text().splitlines(keepends=True)[:5])
        )
    elif case == "gps malformed":
        rows = (tmp_path / "split_locations/all.csv").read_text().splitlines(keepends=True)
        rows[1] = "1,2,north,4,0\n"
        (tmp_path / "split_locations/all.csv").write_text("".join(rows))
    if case in ("one column", "not a number"):
        csv_path.write_text("".join(lines))
    with pytest.raises(GeokitError, match=expected.replace("(", r"\(").replace(".", r"\.")):
        build("cvusa", tmp_path).train_set()


def test_missing_root_shows_the_layout(tmp_path):
    with pytest.raises(GeokitError, match=r"folder not found(.|\n)*splits/train-19zl.csv"):
        build("cvusa", tmp_path / "nowhere")


def test_panorama_augmentation_is_pair_consistent(tmp_path):
    """CVUSA pairs use the panorama geometry (a tile rotation is a panorama roll)."""
    make_cvusa(tmp_path)
    assert build("cvusa", tmp_path)._augment.geometry == "panorama"
    assert build("cvusa", tmp_path, augment=False).augment_pair(1, 2, np.random.default_rng(0)) == (1, 2)
