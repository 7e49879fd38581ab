"""Time the synthetic world generator (city raster, locations, rendering, PNG writing).

    flock /tmp/geokit-cpu.lock .venv/bin/python benchmarks/synthetic_generate.py [--set KEY=VALUE ...]

Generates into a fresh temporary cache (never reuses one) with the demo config's dataset options,
plus overrides, and prints one JSON line: counts, seconds per stage and in total.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from geokit.config import apply_overrides, read_yaml
from geokit_plugins.datasets.synthetic import DEMO_CONFIG, SyntheticOptions
from geokit_plugins.datasets.synthetic.generate import ensure_world


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="dataset option KEY=VALUE")
    args = ap.parse_args()
    data = read_yaml(DEMO_CONFIG)["dataset"]
    data.pop("name")
    data = apply_overrides(data, args.overrides)
    with tempfile.TemporaryDirectory() as tmp:
        opts = SyntheticOptions(**{**data, "root": tmp})
        t0 = time.perf_counter()
        folder = ensure_world(opts, show=False)
        wall = time.perf_counter() - t0
        record = json.loads((Path(folder) / "world.json").read_text())
        size_mb = sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 1e6
    print(
        json.dumps(
            {
                "wall_s": round(wall, 2),
                "counts": record["counts"],
                "locations": sum(record["counts"].values()),
                "seconds": record["seconds"],
                "disk_mb": round(size_mb, 1),
                "params": record["params"],
            }
        )
    )


if __name__ == "__main__":
    main()
