"""Dataset plugin ``cvact`` on a tiny copy of its real layout: pairs, labels, GPS, sets,
and a clear error naming the file and line for every bad input."""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from dataset_layouts import build, make_cvact

from geokit import GeokitError


def utm_forward(lat: float, lon: float, zone: int = 55) -> tuple[float, float]:
    """Snyder's forward transverse Mercator (WGS84), southern hemisphere, for round trips."""
    a, f, k0 = 6378137.0, 1 / 298.257223563, 0.9996
    e2 = f * (2 - f)
    ep2 = e2 / (1 - e2)
    phi, lam = math.radians(lat), math.radians(lon - ((zone - 1) * 6 - 180 + 3))
    n = a / math.sqrt(1 - e2 * math.sin(phi) ** 2)
    t, c, aa = math.tan(phi) ** 2, ep2 * math.cos(phi) ** 2, math.cos(phi) * lam
    m = a * (
        (1 - e2 / 4 - 3 * e2**2 / 64 - 5 * e2**3 / 256) * phi
        - (3 * e2 / 8 + 3 * e2**2 / 32 + 45 * e2**3 / 1024) * math.sin(2 * phi)
        + (15 * e2**2 / 256 + 45 * e2**3 / 1024) * math.sin(4 * phi)
        - (35 * e2**3 / 3072) * math.sin(6 * phi)
    )
    x = k0 * n * (aa + (1 - t + c) * aa**3 / 6 + (5 - 18 * t + t**2 + 72 * c - 58 * ep2) * aa**5 / 120)
    y = k0 * (
        m
        + n
        * math.tan(phi)
        * (
            aa**2 / 2
            + (5 - t + 9 * c + 4 * c**2) * aa**4 / 24
            + (61 - 58 * t + t**2 + 600 * c - 330 * ep2) * aa**6 / 720
        )
    )
    return x + 500_000.0, y + 10_000_000.0


def test_utm_inverse_round_trip():
    from geokit_plugins.datasets.cvact import utm_to_latlon

    for lat, lon in [(-35.2809, 149.1300), (-35.35, 148.95), (-10.0, 147.0)]:
        e, n = utm_forward(lat, lon)
        got = utm_to_latlon(np.array([e]), np.array([n]), 55, True)[0]
        assert abs(got[0] - lat) < 1e-7 and abs(got[1] - lon) < 1e-7
    # the central meridian on the equator
    np.testing.assert_allclose(
        utm_to_latlon(np.array([500_000.0]), np.array([10_000_000.0]), 55, True), [[0.0, 147.0]], atol=1e-9
    )


def test_cvact_mat_structs_and_folders(tmp_path):
    from geokit_plugins.datasets.cvact import utm_to_latlon

    info = make_cvact(tmp_path)
    ds = build("cvact", tmp_path)
    assert ds.splits == ("test", "val")  # split: val is the default (last)
    tr = ds.train_set()
    ids = info["ids"]
    small = tmp_path / "ANU_data_small"
    assert tr.query_paths == [str(small / f"streetview/{ids[i]}_grdView.jpg") for i in info["train_idx"]]
    assert tr.reference_paths == [str(small / f"satview_polish/{ids[i]}_satView_polish.jpg") for i in info["train_idx"]]
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


@pytest.mark.parametrize(
    "case, expected",
    [
        ("no mat", "ACT_data.mat \\(the CVACT index file\\) not found"),
        ("no field", "ACT_data.mat: struct 'trainSet' has no field 'trainInd' \\(fields: trainNum, trainIdx\\)"),
        ("not a struct", "ACT_data.mat: 'valSet' is not a MATLAB struct"),
        ("no variable", "ACT_data.mat: no variable 'utm'"),
        ("bad index", "ACT_data.mat trainSet.trainInd entry 2: 999 is not a 1-based index"),
        ("missing image", "ACT_data.mat trainSet.trainInd entry 1: image not found"),
        ("utm shape", "ACT_data.mat: 'utm' has shape"),
        ("not a mat", "ACT_data.mat: cannot read as a MATLAB file"),
    ],
)
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
