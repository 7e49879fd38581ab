"""Golden digests of a tiny synthetic world: the generator's output is pinned.

Cached worlds are keyed by ``generate.VERSION`` plus the generation options, so a change to the
generator's output that forgets to bump VERSION silently serves stale worlds from the cache. These
tests fail on any change to the output; when the change is deliberate, bump ``VERSION`` in
``plugins/datasets/synthetic/generate.py`` and paste the new digests printed by the failure.

What is hashed (chosen to depend on the generator, not on the encoder libraries):

- the city raster (:func:`world.generate_city`): the raw bytes of every array of the ``City``;
- the world folder: the CSV files (GPS rounded to 6 decimals, about 0.1 m; pixel coordinates
  and headings as written), ``world.json`` without its timings (GPS bounds rounded the same way),
  and the *decoded* pixels of every PNG (PNG is lossless, so decoded pixels do not depend on the
  zlib version or compression level). ``map.jpg`` is lossy (its bytes depend on libjpeg), so it is
  covered through ``City.aerial`` instead.

The values come from numpy's float maths; a CPU whose vector maths rounds differently (numpy
dispatches sin/cos/exp per CPU feature) could change a pixel. Recorded with numpy 2.4 on x86-64
without AVX-512.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from geokit_plugins.datasets.synthetic import SyntheticOptions
from geokit_plugins.datasets.synthetic import world as W
from geokit_plugins.datasets.synthetic.generate import VERSION, generation_params, write_world

# The same tiny world as tests/test_synthetic.py, written out again on purpose: the digests below
# are pinned to exactly these options, so an edit to the other file must not move them.
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
BUMP = (
    "the synthetic generator's output changed. If that is deliberate, bump VERSION in "
    "plugins/datasets/synthetic/generate.py (cached worlds are keyed by it; without the bump users keep "
    "stale worlds) and update the digest here to {got!r}. If it is not (a refactor), the change "
    "altered the output: find why."
)
GOLDEN_CITY = "ed91125d542b0537f6f7f6275780e35b8566f7316d3b5d1ef19b677c34c21655"
GOLDEN_WORLD = "c28218ea2930d4355ba115defce77699eb408c9a05b3917cd79b5294ef26cf54"
GOLDEN_VERSION = 2


def city_digest(city: W.City) -> str:
    h = hashlib.sha256()
    h.update(repr((city.seed, city.size, city.mpp)).encode())
    for name in ("cls", "aerial", "ground", "height", "facade", "normal", "along", "district", "district_type"):
        a = np.ascontiguousarray(getattr(city, name))
        h.update(f"{name} {a.dtype.str} {a.shape}".encode())
        h.update(a.tobytes())
    h.update(np.ascontiguousarray(city.candidates, np.float64).tobytes())
    return h.hexdigest()


def _round_gps(text: str) -> str:
    """CSV text with its lat/lon columns rounded to 6 decimals."""
    rows = list(csv.reader(io.StringIO(text)))
    cols = [i for i, name in enumerate(rows[0]) if name in ("lat", "lon")]
    for row in rows[1:]:
        for i in cols:
            row[i] = f"{float(row[i]):.6f}"
    return "\n".join(",".join(r) for r in rows)


def world_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.glob("*.csv")):
        h.update(path.name.encode())
        h.update(_round_gps(path.read_text()).encode())
    record = json.loads((folder / "world.json").read_text())
    record.pop("seconds")
    record["bounds"] = {k: round(v, 6) for k, v in record["bounds"].items()}
    h.update(json.dumps(record, sort_keys=True).encode())
    for path in sorted(folder.glob("*/*.png")):
        with Image.open(path) as im:
            a = np.asarray(im)
        h.update(f"{path.relative_to(folder).as_posix()} {a.dtype.str} {a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def test_version_is_the_one_pinned() -> None:
    assert VERSION == GOLDEN_VERSION, (
        "generate.VERSION changed: regenerate the golden digests in this file for the new "
        "version (run this file; the failures print them) and set GOLDEN_VERSION."
    )


def test_city_raster_golden() -> None:
    got = city_digest(W.generate_city(TINY["seed"], TINY["map_size"], 1.0))
    assert got == GOLDEN_CITY, BUMP.format(got=got)


def test_world_folder_golden(tmp_path: Path) -> None:
    params = generation_params(SyntheticOptions(**TINY))
    record = write_world(params, tmp_path, show=False)
    assert record["counts"] == {"train": 27, "val": 14, "test": 22}, BUMP.format(got=world_digest(tmp_path))
    got = world_digest(tmp_path)
    assert got == GOLDEN_WORLD, BUMP.format(got=got)
