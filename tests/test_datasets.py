"""The benchmark dataset plugins read their real layouts: pairs, labels, semi-positives, GPS,
query/reference sets, and clear errors naming the file and line for every bad input."""
from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_datasets_layouts import (
    VIGOR_CITIES, make_cvact, make_cvusa, make_u1652, make_vigor, write_image,
)

from geokit import GeokitError
from geokit.registry import create
from geokit.testing import check_dataset

SMALL = {"query_size": [8, 32], "reference_size": [8, 8]}


def build(name: str, root: Path, **options):
    return create("dataset", name, {"root": str(root), **SMALL, **options})


# ------------------------------------------------------------------------------------ CVUSA


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


@pytest.mark.parametrize("case, expected", [
    ("no split file", "splits/train-19zl.csv"),
    ("missing image", "splits/train-19zl.csv line 3: image not found"),
    ("one column", "splits/train-19zl.csv line 2: expected 'satellite,panorama"),
    ("not a number", "splits/train-19zl.csv line 1: satellite file name 'abc.jpg' is not a number"),
    ("gps row missing", "splits/train-19zl.csv line 6: id 6 has no coordinates"),
    ("gps malformed", "split_locations/all.csv line 2: ground latitude 'north' is not a number"),
])
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
            "".join((tmp_path / "split_locations/all.csv").read_text().splitlines(keepends=True)[:5]))
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


# ------------------------------------------------------------------------------------ CVACT


def utm_forward(lat: float, lon: float, zone: int = 55) -> tuple[float, float]:
    """Snyder's forward transverse Mercator (WGS84), southern hemisphere, for round trips."""
    a, f, k0 = 6378137.0, 1 / 298.257223563, 0.9996
    e2 = f * (2 - f)
    ep2 = e2 / (1 - e2)
    phi, lam = math.radians(lat), math.radians(lon - ((zone - 1) * 6 - 180 + 3))
    n = a / math.sqrt(1 - e2 * math.sin(phi) ** 2)
    t, c, aa = math.tan(phi) ** 2, ep2 * math.cos(phi) ** 2, math.cos(phi) * lam
    m = a * ((1 - e2 / 4 - 3 * e2**2 / 64 - 5 * e2**3 / 256) * phi
             - (3 * e2 / 8 + 3 * e2**2 / 32 + 45 * e2**3 / 1024) * math.sin(2 * phi)
             + (15 * e2**2 / 256 + 45 * e2**3 / 1024) * math.sin(4 * phi)
             - (35 * e2**3 / 3072) * math.sin(6 * phi))
    x = k0 * n * (aa + (1 - t + c) * aa**3 / 6 + (5 - 18 * t + t**2 + 72 * c - 58 * ep2) * aa**5 / 120)
    y = k0 * (m + n * math.tan(phi) * (aa**2 / 2 + (5 - t + 9 * c + 4 * c**2) * aa**4 / 24
                                       + (61 - 58 * t + t**2 + 600 * c - 330 * ep2) * aa**6 / 720))
    return x + 500_000.0, y + 10_000_000.0


def test_utm_inverse_round_trip():
    from geokit_plugins.cvact import utm_to_latlon

    for lat, lon in [(-35.2809, 149.1300), (-35.35, 148.95), (-10.0, 147.0)]:
        e, n = utm_forward(lat, lon)
        got = utm_to_latlon(np.array([e]), np.array([n]), 55, True)[0]
        assert abs(got[0] - lat) < 1e-7 and abs(got[1] - lon) < 1e-7
    # the central meridian on the equator
    np.testing.assert_allclose(utm_to_latlon(np.array([500_000.0]), np.array([10_000_000.0]), 55, True),
                               [[0.0, 147.0]], atol=1e-9)


def test_cvact_mat_structs_and_folders(tmp_path):
    from geokit_plugins.cvact import utm_to_latlon

    info = make_cvact(tmp_path)
    ds = build("cvact", tmp_path)
    assert ds.splits == ("test", "val")  # split: val is the default (last)
    tr = ds.train_set()
    ids = info["ids"]
    small = tmp_path / "ANU_data_small"
    assert tr.query_paths == [str(small / f"streetview/{ids[i]}_grdView.jpg") for i in info["train_idx"]]
    assert tr.reference_paths == [str(small / f"satview_polish/{ids[i]}_satView_polish.jpg")
                                  for i in info["train_idx"]]
    utm = info["utm"][info["train_idx"]]
    np.testing.assert_allclose(tr.reference_gps, utm_to_latlon(utm[:, 0], utm[:, 1], 55, True))
    assert np.all(np.abs(tr.reference_gps - [-35.3, 149.1]) < 0.2)  # Canberra
    val = ds.eval_set()
    assert val.name == "val" and len(val.query_paths) == 3
    assert val.query_paths == [str(small / f"streetview/{ids[i]}_grdView.jpg") for i in info["val_idx"]]
    assert val.positives().tolist() == [0, 1, 2]
    test = ds.eval_set("test")
    assert [Path(p).name for p in test.reference_paths] == [f"{t}_satView_polish.jpg" for t in info["test_ids"]]
    assert test.positives().tolist() == list(range(4))  # the unpaired panorama is left out


def test_cvact_split_option_and_cell_array(tmp_path):
    import scipy.io

    info = make_cvact(tmp_path)
    shutil.rmtree(tmp_path / "ANU_data_test")
    assert build("cvact", tmp_path).splits == ("val",)  # no ANU_data_test: val only
    m = scipy.io.loadmat(tmp_path / "ACT_data.mat")
    cell = np.empty((len(info["ids"]), 1), dtype=object)
    for i, s in enumerate(info["ids"]):
        cell[i, 0] = s
    m["panoIds"] = cell  # a cell array of strings instead of a char matrix
    scipy.io.savemat(tmp_path / "ACT_data.mat", {k: v for k, v in m.items() if not k.startswith("__")})
    assert len(build("cvact", tmp_path).train_set()) == 5
    ds = build("cvact", tmp_path, split="test")
    assert ds.splits == ("val", "test")
    with pytest.raises(GeokitError, match="ANU_data_test/streetview"):
        ds.eval_set()


@pytest.mark.parametrize("case, expected", [
    ("no mat", "ACT_data.mat \\(the CVACT index file\\) not found"),
    ("no field", "ACT_data.mat: struct 'trainSet' has no field 'trainInd' \\(fields: trainNum, trainIdx\\)"),
    ("not a struct", "ACT_data.mat: 'valSet' is not a MATLAB struct"),
    ("no variable", "ACT_data.mat: no variable 'utm'"),
    ("bad index", "ACT_data.mat trainSet.trainInd entry 2: 999 is not a 1-based index"),
    ("missing image", "ACT_data.mat trainSet.trainInd entry 1: image not found"),
    ("utm shape", "ACT_data.mat: 'utm' has shape"),
    ("not a mat", "ACT_data.mat: cannot read as a MATLAB file"),
])
def test_cvact_bad_input(tmp_path, case, expected):
    import scipy.io

    names = (("trainNum", "trainIdx"), ("valNum", "valInd")) if case == "no field" else None
    info = make_cvact(tmp_path, field_names=names)
    mat = tmp_path / "ACT_data.mat"
    m = {k: v for k, v in scipy.io.loadmat(mat).items() if not k.startswith("__")}
    if case == "no mat":
        mat.unlink()
    elif case == "not a struct":
        m["valSet"] = np.arange(3.0)
    elif case == "no variable":
        del m["utm"]
    elif case == "bad index":
        ind = m["trainSet"]["trainInd"][0, 0].copy()
        ind[1, 0] = 999
        m["trainSet"] = {"trainNum": 5.0, "trainInd": ind}
    elif case == "missing image":
        (tmp_path / f"ANU_data_small/satview_polish/{info['ids'][info['train_idx'][0]]}_satView_polish.jpg").unlink()
    elif case == "utm shape":
        m["utm"] = m["utm"][:3]
    elif case == "not a mat":
        mat.write_text("hello")
    if case in ("not a struct", "no variable", "bad index", "utm shape"):
        scipy.io.savemat(mat, m)
    with pytest.raises(GeokitError, match=expected):
        ds = build("cvact", tmp_path)
        ds.train_set()
        ds.eval_set("val")


def test_cvact_skip_missing_is_a_warning(tmp_path, caplog):
    info = make_cvact(tmp_path)
    (tmp_path / f"ANU_data_small/streetview/{info['ids'][info['train_idx'][2]]}_grdView.jpg").unlink()
    with caplog.at_level(logging.WARNING, logger="geokit"):
        tr = build("cvact", tmp_path, skip_missing=True).train_set()
    assert len(tr) == 4 and "trainSet.trainInd entry 3: image not found" in caplog.text


# ------------------------------------------------------------------------------------ VIGOR


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
    for i, (c, r) in enumerate(train_rows):  # semi-positives become batch conflicts
        semi = [_sat_path(tmp_path, c, info["sats"][c][s][0], official) for s in r[2]]
        expect = [tr.reference_paths.index(p) if p in tr.reference_paths else -1 for p in semi]
        assert tr.pair_conflicts[i].tolist() == expect
    assert (tr.pair_conflicts >= 0).any() and (tr.pair_conflicts == -1).any()
    for j, p in enumerate(tr.reference_paths):  # GPS from satellite_<lat>_<lon>.png
        lat, lon = (float(x) for x in Path(p).stem.split("_")[1:])
        np.testing.assert_allclose(tr.reference_gps[j], [lat, lon])

    es = ds.eval_set()
    assert es.reference_paths == gallery  # all tiles of the four cities, in list order
    test_rows = [(c, r) for c in VIGOR_CITIES for r in info[c][2:]]
    assert [Path(p).name for p in es.query_paths] == [r[0] for _, r in test_rows]
    assert es.query_labels.tolist() == [gindex[_sat_path(tmp_path, c, info["sats"][c][r[1]][0], official)]
                                        for c, r in test_rows]
    assert es.semi_positives.tolist() == [[gindex[_sat_path(tmp_path, c, info["sats"][c][s][0], official)]
                                           for s in r[2]] for c, r in test_rows]
    np.testing.assert_allclose(es.query_gps, [(r[3], r[4]) for _, r in test_rows], atol=1e-6)
    assert es.positives().tolist() == es.query_labels.tolist()


def test_vigor_cross_area(tmp_path):
    info = make_vigor(tmp_path)
    ds = build("vigor", tmp_path, mode="cross")
    tr = ds.train_set()
    assert [Path(p).name for p in tr.query_paths] == [r[0] for c in ("NewYork", "Seattle") for r in info[c]]
    assert {Path(p).parent.name for p in tr.reference_paths} == {"NewYork", "Seattle"}
    es = ds.eval_set()
    assert es.reference_paths == [_sat_path(tmp_path, c, s[0]) for c in ("Chicago", "SanFrancisco")
                                  for s in info["sats"][c]]
    assert [Path(p).name for p in es.query_paths] == [r[0] for c in ("Chicago", "SanFrancisco") for r in info[c]]


@pytest.mark.parametrize("case, expected", [
    ("city missing", "city folder missing: .*splits/Seattle"),
    ("label file missing", "splits/NewYork/same_area_balanced_train.txt \\(the train label file of NewYork\\) not found"),
    ("twelve columns", "splits/Chicago/same_area_balanced_train.txt line 2: expected 13 whitespace-separated"),
    ("unknown tile", "splits/Chicago/same_area_balanced_train.txt line 1: semi-positive 2 tile nope.png "
                     "\\(column 8\\)"),
    ("bad offset", "splits/Chicago/same_area_balanced_train.txt line 1: column 3 \\(a pixel offset\\)"),
    ("missing pano", "splits/Chicago/same_area_balanced_train.txt line 1: image not found"),
    ("missing tile", "splits/Chicago/satellite_list.txt line 2: image not found"),
    ("no image folder", "ground images of SanFrancisco not found"),
])
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


# ------------------------------------------------------------------------------ University-1652


def test_u1652_train_pairs_and_both_directions(tmp_path):
    make_u1652(tmp_path)
    ds = build("university1652", tmp_path)
    tr = ds.train_set()
    assert [Path(p).parent.name for p in tr.query_paths] == ["0001", "0001", "0002", "0002", "0003", "0003"]
    assert [Path(tr.reference_paths[j]).name for j in tr.pair_reference] == \
        ["0001.jpg", "0001.jpg", "0002.jpg", "0002.jpg", "0003.jpg", "0003.jpg"]
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
    assert build("university1652", tmp_path, direction="sat2drone",
                 protocol="sample4geo").eval_set().reference_labels.tolist() == [10, 10, 11, 11]
    assert (s2d.query_view, s2d.reference_view) == ("satellite", "drone")
    # training is drone -> satellite in both directions
    assert s2d.train_set().reference_paths == tr.reference_paths


def test_u1652_view_sizes_follow_the_image(tmp_path):
    make_u1652(tmp_path)
    ds = create("dataset", "university1652", {"root": str(tmp_path), "direction": "sat2drone",
                                              "query_size": [16, 16], "reference_size": [8, 12]})
    tr = ds.train_set()
    # a training drone image gets the drone size even when the caller asks for the query size
    assert ds.load_image(tr.query_paths[0], ds.query_size).shape == (8, 12, 3)
    assert ds.load_image(tr.reference_paths[0], ds.reference_size).shape == (16, 16, 3)
    assert create("dataset", "university1652", {"root": str(tmp_path)}).query_size == (384, 384)


@pytest.mark.parametrize("case, expected", [
    ("empty class", "train/drone/0002: class folder holds no image"),
    ("no satellite", "train/drone/0003: building 0003 has drone images but no satellite folder"),
    ("two tiles", "train/satellite/0001: expected one satellite tile per building, found 2"),
    ("not a number", "train/drone/abc: class folder names are building numbers"),
    ("no test folder", "folder not found: .*test/gallery_satellite"),
    ("query without gallery", "test/query_drone: 1 query buildings have no gallery folder"),
])
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


# ------------------------------------------------------------------------------------ conformance


@pytest.mark.parametrize("name, maker, options", [
    ("cvusa", make_cvusa, {}),
    ("cvact", make_cvact, {}),
    ("cvact", make_cvact, {"split": "test"}),
    ("vigor", make_vigor, {}),
    ("vigor", make_vigor, {"mode": "cross"}),
    ("university1652", make_u1652, {}),
    # one size for both views (the paper's 384x384): check_dataset loads training drone images at
    # query_size, which in sat2drone is the satellite view's size
    ("university1652", make_u1652, {"direction": "sat2drone", "protocol": "sample4geo",
                                    "query_size": [8, 8]}),
])
def test_check_dataset_conformance(tmp_path, name, maker, options):
    maker(tmp_path)
    check_dataset(name, {"root": str(tmp_path), **SMALL, **options})


def test_panorama_augmentation_is_pair_consistent(tmp_path):
    """A rotation of the tile is a roll of the panorama; U1652 rotates the tile on its own."""
    make_cvusa(tmp_path)
    ds = create("dataset", "cvusa", {"root": str(tmp_path), **SMALL})
    assert ds._augment.geometry == "panorama"
    make_u1652(tmp_path / "u")
    assert build("university1652", tmp_path / "u")._augment.geometry == "independent"
    assert build("cvusa", tmp_path, augment=False).augment_pair(1, 2, np.random.default_rng(0)) == (1, 2)
