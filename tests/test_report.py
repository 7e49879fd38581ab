"""Report pictures (geokit.report): generic over any EvalSet, Pillow only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from geokit import report
from geokit.registry import create


@pytest.fixture
def evaluated(pairs_root: Path):
    ds = create("dataset", "pairs", {"root": str(pairs_root), "query_size": [16, 64], "reference_size": [32, 32]})
    es = ds.eval_set("test")
    rng = np.random.default_rng(0)
    r = rng.normal(size=(len(es.reference_paths), 8)).astype(np.float32)
    q = r[es.query_labels] + 0.8 * rng.normal(size=(len(es.query_paths), 8)).astype(np.float32)
    return ds, es, q, r


def test_retrieval_sheet(evaluated, tmp_path: Path) -> None:
    ds, es, q, r = evaluated
    path = report.retrieval_sheet(ds, es, q, r, tmp_path / "sheet.png", rows=4, k=5, cell=48)
    with Image.open(path) as im:
        w, h = im.size
    assert w > 5 * 48 + 4 * 48 and h > 4 * 48


def test_training_curve_with_and_without_eval(tmp_path: Path) -> None:
    hist = [{"epoch": e, "loss": 3.0 / e, "eval/R@1": 10.0 * e} for e in range(1, 5)]
    with Image.open(report.training_curve(hist, tmp_path / "a.png")) as im:
        assert im.size == (900, 340)
    report.training_curve([{"epoch": 1, "loss": 2.0}], tmp_path / "b.png")  # one point, no eval
    report.training_curve([], tmp_path / "c.png")


def test_location_map_and_errors(evaluated, tmp_path: Path) -> None:
    _ds, es, q, r = evaluated
    top1 = report.top_k(q, r, 1)[:, 0]
    err = report.localisation_errors(es, top1)
    hit = es.reference_labels[top1] == es.query_labels
    assert err is not None and np.all(err[hit] < 1e-6) and np.all(err[~hit] > 0)
    bg = Image.new("RGB", (100, 100), "green")
    lat, lon = es.query_gps[:, 0], es.query_gps[:, 1]
    bounds = {"north": lat.max() + 0.01, "south": lat.min() - 0.01, "west": lon.min() - 0.01, "east": lon.max() + 0.01}
    path = report.location_map(es, top1, tmp_path / "map.png", size=300, background=bg, bounds=bounds)
    with Image.open(path) as im:
        assert im.size == (300 + 250, 348)  # the map, then its legend and error bands
        px = np.asarray(im.convert("RGB"))[48:348, :300].reshape(-1, 3)
    for colour, present in ((report.GREEN, hit.any()), (report.RED, (~hit & (err > 50)).any())):
        assert np.all(px == colour, axis=1).any() == present  # misses are marked in their own colour
    es.query_gps = None
    assert report.localisation_errors(es, top1) is None
    with pytest.raises(ValueError, match="GPS"):
        report.location_map(es, top1, tmp_path / "x.png")


def test_haversine_one_degree_of_latitude() -> None:
    assert abs(report.haversine_m(np.array([0.0, 0.0]), np.array([1.0, 0.0])) - 111_195) < 5


@pytest.mark.parametrize(
    "lo, hi, ticks",
    [
        (0.0, 100.0, [0, 20, 40, 60, 80, 100]),
        (0.0, 3.2, [0, 1, 2, 3]),
        (0.3, 4.1, [1, 2, 3, 4]),
        (2.05, 2.61, [2.2, 2.4, 2.6]),
        (0.0, 0.5, [0, 0.1, 0.2, 0.3, 0.4, 0.5]),
    ],
)
def test_nice_ticks_are_round_numbers(lo, hi, ticks):
    assert report.nice_ticks(lo, hi) == pytest.approx(ticks)


def test_training_curve_has_a_grid_and_integer_epoch_ticks(tmp_path: Path) -> None:
    hist = [{"epoch": e, "loss": 3.0 / e} for e in range(1, 4)]
    img = np.asarray(Image.open(report.training_curve(hist, tmp_path / "a.png")).convert("RGB"))
    grid = np.all(img == report.GRID, axis=2)
    assert grid.sum(axis=1).max() > 200  # horizontal grid lines across the panel
