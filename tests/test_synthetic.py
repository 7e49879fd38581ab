"""The synthetic world generator: determinism, geometry conventions, splits, GPS, caching."""

from __future__ import annotations

import csv
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from geokit.geo import distance_m
from geokit_plugins.datasets.synthetic import SyntheticOptions
from geokit_plugins.datasets.synthetic import world as W
from geokit_plugins.datasets.synthetic.generate import ensure_world

TINY = dict(
    seed=3,
    map_size=320,
    locations=90,
    spacing=10.0,
    tile_metres=40.0,
    query_size=[16, 64],
    reference_size=[32, 32],
    test_fraction=0.25,
    val_fraction=0.15,
)


def tiny(root: Path, **kw) -> SyntheticOptions:
    return SyntheticOptions(root=root, **{**TINY, **kw})


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return ensure_world(tiny(tmp_path_factory.mktemp("synthetic")))


def rows(folder: Path, name: str) -> list[dict[str, str]]:
    with open(folder / name, newline="") as fh:
        return list(csv.DictReader(fh))


def test_deterministic_bytes(world: Path, tmp_path: Path) -> None:
    again = ensure_world(tiny(tmp_path))
    assert again != world and again.name == world.name  # same parameters, same hash
    files = sorted(p.relative_to(world) for p in world.rglob("*") if p.is_file() and p.name != "world.json")
    assert len(files) > 100
    for rel in files:
        assert (world / rel).read_bytes() == (again / rel).read_bytes(), f"{rel} differs"
    other = ensure_world(tiny(tmp_path, seed=4))
    assert other != again and (other / "map.jpg").read_bytes() != (again / "map.jpg").read_bytes()


def test_cache_reuse_and_concurrent_generation(tmp_path: Path) -> None:
    opts = tiny(tmp_path, locations=30)
    out: list[Path] = []
    threads = [threading.Thread(target=lambda: out.append(ensure_world(opts))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 2 and out[0] == out[1]
    assert [p.name for p in tmp_path.iterdir()] == [out[0].name]  # no temporary folders left
    stamp = (out[0] / "world.json").stat().st_mtime_ns
    assert ensure_world(opts) == out[0] and (out[0] / "world.json").stat().st_mtime_ns == stamp


def test_splits_disjoint_and_area_gap(world: Path, tmp_path: Path) -> None:
    loc = rows(world, "locations.csv")
    xy = {r["id"]: (float(r["x"]), float(r["y"])) for r in loc}
    per: dict[str, set[str]] = {}
    for name in ("train", "val", "test"):
        split_rows = rows(world, f"{name}.csv")
        assert split_rows, f"{name}.csv is empty"
        per[name] = {r["reference"] for r in split_rows} | {r["query"] for r in split_rows}
    assert not (per["train"] & per["test"]) and not (per["train"] & per["val"]) and not (per["val"] & per["test"])
    pts = {s: np.array([xy[r["id"]] for r in loc if r["split"] == s]) for s in ("train", "val", "test")}
    for held in ("test", "val"):  # cross-area: every training tile is at least one tile away
        d = np.abs(pts["train"][:, None, :] - pts[held][None, :, :]).max(-1)
        assert d.min() >= TINY["tile_metres"] - 1e-6
    assert pts["test"][:, 0].mean() > pts["val"][:, 0].mean()  # test south-east, val north-west
    rnd = ensure_world(tiny(tmp_path, split="random"))
    sets = [{r["query"] for r in rows(rnd, f"{s}.csv")} for s in ("train", "val", "test")]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])


def test_gps_matches_map_distances(world: Path) -> None:
    loc = rows(world, "locations.csv")
    xy = np.array([[float(r["x"]), float(r["y"])] for r in loc])
    gps = np.array([[float(r["lat"]), float(r["lon"])] for r in loc])
    i, j = np.triu_indices(len(loc), 1)
    map_m = np.hypot(*(xy[i] - xy[j]).T) * 1.0  # 1 m per pixel
    geo_m = distance_m(gps[i], gps[j])
    far = map_m > 20
    assert np.allclose(geo_m[far], map_m[far], rtol=2e-3)
    # north is up: a location further north (smaller y) has a larger latitude
    assert np.all(np.sign(gps[i, 0] - gps[j, 0]) == np.sign(xy[j, 1] - xy[i, 1])[...])


def test_neighbouring_tiles_overlap(world: Path) -> None:
    loc = rows(world, "locations.csv")
    xy = np.array([[float(r["x"]), float(r["y"])] for r in loc])
    d = np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1))
    np.fill_diagonal(d, np.inf)
    a, b = np.unravel_index(np.argmin(d), d.shape)
    assert d[a, b] < TINY["tile_metres"] / 2
    ta = np.asarray(Image.open(world / f"aerial/{a:05d}.png"), np.float32)
    tb = np.asarray(Image.open(world / f"aerial/{b:05d}.png"), np.float32)
    size = ta.shape[0]
    ox, oy = np.round((xy[b] - xy[a]) * size / TINY["tile_metres"]).astype(int)
    # pixel (r, c) of tile b shows what pixel (r + oy, c + ox) of tile a shows
    ra, rb = slice(max(oy, 0), size + min(oy, 0)), slice(max(-oy, 0), size + min(-oy, 0))
    ca, cb = slice(max(ox, 0), size + min(ox, 0)), slice(max(-ox, 0), size + min(-ox, 0))
    same = np.abs(ta[ra, ca] - tb[rb, cb]).mean()
    unrelated = np.abs(
        ta
        - np.asarray(
            Image.open(world / f"aerial/{int(np.argmax(np.where(np.isinf(d[a]), 0, d[a]))):05d}.png"), np.float32
        )
    ).mean()
    assert same < 0.5 * unrelated and same < 25, (same, unrelated)


@pytest.mark.parametrize("dx, dy, column", [(0, -25, 0.0), (25, 0, 0.25), (0, 25, 0.5), (-25, 0, 0.75)])
def test_panorama_faces_north_at_column_zero(dx: int, dy: int, column: float) -> None:
    """A red tower planted 25 m from the camera appears at the azimuth the convention says
    (north at column 0, east at W/4, clockwise) and on the matching side of the aerial tile."""
    city = W.generate_city(5, 256)
    x, y = 128.5, 128.5
    tx, ty = int(x + dx), int(y + dy)
    city.height[:] = 0.0  # an empty plain: only the landmark stands up
    city.cls[:] = W.GRASS
    city.height[ty - 2 : ty + 3, tx - 2 : tx + 3] = 60.0
    city.cls[ty - 2 : ty + 3, tx - 2 : tx + 3] = W.BUILDING
    city.facade[ty - 2 : ty + 3, tx - 2 : tx + 3] = (255, 0, 0)
    city.aerial[ty - 2 : ty + 3, tx - 2 : tx + 3] = (255, 0, 0)
    W_ = 128
    pano = W.render_panoramas(city, np.array([[x, y]]), (32, W_))[0].astype(int)
    red = (pano[..., 0] > 120) & (pano[..., 1] < 90) & (pano[..., 2] < 90)
    cols = np.flatnonzero(red.any(0))
    assert len(cols), "the landmark is not visible"
    ang = np.angle(np.exp(2j * np.pi * (cols + 0.5) / W_).mean()) / (2 * np.pi) % 1.0
    assert min(abs(ang - column), 1 - abs(ang - column)) < 2 / W_, (ang, column)
    tile = W.render_tiles(city, np.array([[x, y]]), 64, 64.0)[0].astype(int)
    r, c = np.nonzero((tile[..., 0] > 200) & (tile[..., 1] < 60))
    assert np.allclose([c.mean() - 32, r.mean() - 32], [dx, dy], atol=2)


def test_random_heading_rolls_the_panorama(tmp_path: Path) -> None:
    city = W.generate_city(1, 256)
    xy = city.candidates[:1]
    north = W.render_panoramas(city, xy, (16, 64))[0]
    turned = W.render_panoramas(city, xy, (16, 64), headings=np.array([np.pi / 2]))[0]
    assert np.abs(np.roll(north, -16, axis=1).astype(int) - turned.astype(int)).mean() < 3


def test_bad_options_name_the_key() -> None:
    from geokit.errors import GeokitError
    from geokit.registry import create

    with pytest.raises(GeokitError, match="dataset.reference_size"):
        create("dataset", "synthetic", {"reference_size": [32, 64]})
    with pytest.raises(GeokitError, match="dataset.heading"):
        create("dataset", "synthetic", {"heading": "south"})
