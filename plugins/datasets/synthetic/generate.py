"""Write a synthetic world to disk once: a ``pairs`` dataset folder, cached by parameter hash.

Layout of a world folder (``<cache>/synthetic-<hash>``)::

    ground/00000.png ...   query panoramas (query_size)
    aerial/00000.png ...   reference tiles (reference_size)
    train.csv val.csv test.csv   query,reference,lat,lon (the ``pairs`` format) + heading
    locations.csv          id,split,x,y,lat,lon,heading for every location (pixels of map.jpg)
    map.jpg                the whole city from above (north up, 1 pixel = metres_per_pixel)
    world.json             parameters, counts, GPS bounds, generation seconds

The folder is written under a temporary name and renamed into place, so a reader never sees a
half-written world and two processes generating the same world at once both end up using one.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from geokit_plugins.datasets.synthetic import world as W

VERSION = 2  # bump when the generator's output changes for the same parameters
GENERATION_KEYS = (
    "seed",
    "locations",
    "map_size",
    "metres_per_pixel",
    "spacing",
    "tile_metres",
    "query_size",
    "reference_size",
    "heading",
    "split",
    "test_fraction",
    "val_fraction",
    "origin_lat",
    "origin_lon",
    "eye_height",
    "view_distance",
)


def generation_params(options: Any) -> dict[str, Any]:
    """The options that determine the world's bytes (not where it lives or how it is read)."""
    data = options.model_dump(mode="json")
    return {k: data[k] for k in GENERATION_KEYS}


def world_key(params: dict[str, Any]) -> str:
    blob = json.dumps({"version": VERSION, **params}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_root(root: Path | None) -> Path:
    """``root``, else ``$GEOKIT_CACHE``, else ``~/.cache/geokit``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("GEOKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "geokit"


def ensure_world(options: Any, *, show: bool | None = None) -> Path:
    """The world folder for ``options``, generating it first when it is not cached yet."""
    params = generation_params(options)
    base = cache_root(options.root)
    final = base / f"synthetic-{world_key(params)}"
    if (final / "world.json").is_file():
        return final
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=base))
    try:
        write_world(params, tmp, show=show)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "world.json").is_file():  # not a lost race: a real error
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def split_locations(xy: np.ndarray, params: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """Split name per location: ``train``/``val``/``test``, or ``""`` (dropped: the gap between
    areas, so that no training tile overlaps a test or validation tile)."""
    n = len(xy)
    n_test = int(round(params["test_fraction"] * n))
    n_val = int(round(params["val_fraction"] * n))
    out = np.full(n, "train", dtype=object)
    if params["split"] == "random":
        order = rng.permutation(n)
        out[order[:n_test]] = "test"
        out[order[n_test : n_test + n_val]] = "val"
        return out
    size = params["map_size"]
    gap = params["tile_metres"] / params["metres_per_pixel"]
    # Test: the square around the south-east corner holding n_test locations; val: north-west.
    for name, count, dist in (
        ("test", n_test, np.maximum(size - xy[:, 0], size - xy[:, 1])),
        ("val", n_val, np.maximum(xy[:, 0], xy[:, 1])),
    ):
        if count == 0:
            continue
        free = np.flatnonzero(out == "train")
        order = free[np.argsort(dist[free], kind="stable")]
        chosen = order[:count]
        bound = dist[chosen].max()
        out[chosen] = name
        out[order[count:][dist[order[count:]] < bound + gap]] = ""
    return out


def write_world(params: dict[str, Any], folder: Path, *, show: bool | None = None) -> dict[str, Any]:
    """Generate the world for ``params`` into ``folder``; returns the ``world.json`` record."""
    from geokit.runtime import log

    t0 = time.perf_counter()
    p = params
    log.info(
        "generating the synthetic world (seed %d, %d locations, %d m map) in %s",
        p["seed"],
        p["locations"],
        int(p["map_size"] * p["metres_per_pixel"]),
        folder.parent,
    )
    city = W.generate_city(p["seed"], p["map_size"], p["metres_per_pixel"])
    t_city = time.perf_counter() - t0
    xy, headings, split = place_locations(city, p)
    gps = W.pixels_to_gps(xy, p["map_size"], p["metres_per_pixel"], (p["origin_lat"], p["origin_lon"]))
    write_images(city, xy, headings, p, folder, show=show)
    write_csvs(folder, xy, gps, np.degrees(headings) % 360, split)
    seconds = time.perf_counter() - t0
    record = world_record(p, city, split, {"city": round(t_city, 2), "total": round(seconds, 2)})
    (folder / "world.json").write_text(json.dumps(record, indent=2) + "\n")
    log.info(
        "synthetic world: %s locations (train/val/test) in %.1f s",
        "/".join(str(v) for v in record["counts"].values()),
        seconds,
    )
    return record


def place_locations(city: W.City, p: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Street locations ``(n, 2)`` in map pixels, their headings (radians) and split names,
    without the locations dropped between split areas."""
    xy = W.sample_locations(city, p["locations"], p["spacing"], p["seed"])
    rng = np.random.default_rng([p["seed"], 3])
    headings = rng.uniform(0, 2 * np.pi, len(xy)) if p["heading"] == "random" else np.zeros(len(xy))
    split = split_locations(xy, p, rng)
    keep = np.flatnonzero(split != "")
    return xy[keep], headings[keep], split[keep]


def write_images(
    city: W.City, xy: np.ndarray, headings: np.ndarray, p: dict[str, Any], folder: Path, *, show: bool | None
) -> None:
    """Render and save ``ground/NNNNN.png`` (panoramas), ``aerial/NNNNN.png`` (tiles) and
    ``map.jpg``; rendering runs in chunks while two threads compress the previous chunk."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    from geokit.runtime import progress

    (folder / "ground").mkdir(parents=True, exist_ok=True)
    (folder / "aerial").mkdir(parents=True, exist_ok=True)
    qh, qw = p["query_size"]
    rh, rw = p["reference_size"]
    if rh != rw:
        raise ValueError("synthetic: reference_size must be square (north-up aerial tiles)")

    def save(args: tuple[np.ndarray, Path]) -> None:
        Image.fromarray(args[0]).save(args[1], compress_level=1)

    chunk = 192
    with ThreadPoolExecutor(max_workers=2) as pool:  # zlib releases the GIL while rendering continues
        pending = []
        for a in progress(range(0, len(xy), chunk), total=-(-len(xy) // chunk), desc="render world", enabled=show):
            sl = slice(a, a + chunk)
            tiles = W.render_tiles(city, xy[sl], rh, p["tile_metres"])
            panos = W.render_panoramas(
                city, xy[sl], (qh, qw), headings=headings[sl], eye=p["eye_height"], max_m=p["view_distance"]
            )
            for j in range(len(tiles)):
                i = a + j
                pending.append(pool.submit(save, (panos[j], folder / "ground" / f"{i:05d}.png")))
                pending.append(pool.submit(save, (tiles[j], folder / "aerial" / f"{i:05d}.png")))
        for f in pending:
            f.result()
    Image.fromarray(city.aerial).save(folder / "map.jpg", quality=90)


def write_csvs(folder: Path, xy: np.ndarray, gps: np.ndarray, heading_deg: np.ndarray, split: np.ndarray) -> None:
    """``train.csv``/``val.csv``/``test.csv`` (the ``pairs`` format + heading) and ``locations.csv``."""
    for name in ("train", "val", "test"):
        with open(folder / f"{name}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["query", "reference", "lat", "lon", "heading"])
            for i in np.flatnonzero(split == name).tolist():
                w.writerow(
                    [
                        f"ground/{i:05d}.png",
                        f"aerial/{i:05d}.png",
                        f"{gps[i, 0]:.7f}",
                        f"{gps[i, 1]:.7f}",
                        f"{heading_deg[i]:.2f}",
                    ]
                )
    with open(folder / "locations.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "split", "x", "y", "lat", "lon", "heading"])
        for i in range(len(xy)):
            w.writerow(
                [
                    i,
                    split[i],
                    f"{xy[i, 0]:.2f}",
                    f"{xy[i, 1]:.2f}",
                    f"{gps[i, 0]:.7f}",
                    f"{gps[i, 1]:.7f}",
                    f"{heading_deg[i]:.2f}",
                ]
            )


def world_record(p: dict[str, Any], city: W.City, split: np.ndarray, seconds: dict[str, float]) -> dict[str, Any]:
    """The ``world.json`` record: parameters, counts per split, district types, GPS bounds."""
    corners = W.pixels_to_gps(
        np.array([[0.0, 0.0], [p["map_size"], p["map_size"]]]),
        p["map_size"],
        p["metres_per_pixel"],
        (p["origin_lat"], p["origin_lon"]),
    )
    return {
        "generator": f"geokit synthetic v{VERSION}",
        "params": p,
        "counts": {name: int((split == name).sum()) for name in ("train", "val", "test")},
        "district_types": [["downtown", "residential", "industrial", "park"][t] for t in city.district_type],
        # north, west, south, east edges of map.jpg, degrees
        "bounds": {"north": corners[0, 0], "west": corners[0, 1], "south": corners[1, 0], "east": corners[1, 1]},
        "seconds": seconds,
    }
