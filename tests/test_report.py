"""Report pictures (geokit.cli.report): generic over any EvalSet, Pillow only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from geokit.cli import report
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


LOSS_COLOUR, EVAL_COLOUR = (40, 90, 200), (200, 80, 40)  # the two curves of training_curve


def _curve(history: list[dict], path: Path) -> np.ndarray:
    with Image.open(report.training_curve(history, path)) as im:
        assert im.size == (900, 340)
        return np.asarray(im.convert("RGB"))


def _where(img: np.ndarray, colour: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.nonzero(np.all(img == colour, axis=2))
    return xs, ys


def _no_data(img: np.ndarray, x0: int) -> bool:
    """The grey 'no data' note, written mid-height 10 px right of a panel's axis at ``x0``."""
    return bool(np.all(img[150:180, x0 + 10 : x0 + 130] == report.GREY, axis=2).any())


def test_training_curve_with_and_without_eval(tmp_path: Path) -> None:
    # Loss 3, 1.5, 1, 0.75 and R@1 10..40 % over epochs 1-4. Loss panel: plot x 66..428, y 36
    # (top) to 290 (axis); round limits 0.5..3.5 (ticks of 0.5), so loss 3 at epoch 1 is at
    # (66, 290 - 2.5/3 * 254 = 78) and 0.75 at epoch 4 at (428, 269). R@1 panel: x 516..878,
    # 0..50 % (a round top above 40), so 10 % at (516, 290 - 0.2 * 254 = 239), 40 % at (878, 87).
    img = _curve([{"epoch": e, "loss": 3.0 / e, "eval/R@1": 10.0 * e} for e in range(1, 5)], tmp_path / "a.png")
    for (x, y), colour in (((66, 78), LOSS_COLOUR), ((428, 269), LOSS_COLOUR)):
        assert tuple(img[y, x]) == colour
    for (x, y), colour in (((516, 239), EVAL_COLOUR), ((878, 87), EVAL_COLOUR)):
        assert tuple(img[y, x]) == colour
    xs, ys = _where(img, LOSS_COLOUR)
    assert xs.max() < 440 and abs(ys.min() - (78.3 - 3)) <= 1 and abs(ys.max() - (268.8 + 3)) <= 1  # dots: radius 3
    xs, ys = _where(img, EVAL_COLOUR)
    assert xs.min() > 460 and abs(ys.min() - (86.8 - 3)) <= 1 and abs(ys.max() - (239.2 + 3)) <= 1
    assert not _no_data(img, 66) and not _no_data(img, 516)

    # One epoch, no evaluation: one dot centred in the loss panel (epoch 1 of 0.5..1.5, loss 2 of
    # 0.5..3.5: (247, 163)); the R@1 panel says it has no data.
    img = _curve([{"epoch": 1, "loss": 2.0}], tmp_path / "b.png")
    xs, ys = _where(img, LOSS_COLOUR)
    assert len(xs) > 20 and (xs.mean(), ys.mean()) == pytest.approx((247, 163), abs=0.5)
    assert len(_where(img, EVAL_COLOUR)[0]) == 0
    assert not _no_data(img, 66) and _no_data(img, 516)

    img = _curve([], tmp_path / "c.png")  # nothing yet: both panels say so, no curve drawn
    assert len(_where(img, LOSS_COLOUR)[0]) == 0 and len(_where(img, EVAL_COLOUR)[0]) == 0
    assert _no_data(img, 66) and _no_data(img, 516)


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
    assert abs(report.distance_m(np.array([0.0, 0.0]), np.array([1.0, 0.0])) - 111_195) < 5


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
