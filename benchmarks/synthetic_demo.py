"""Run `geokit demo` as a user would and record its wall time, generation time and metrics.

    flock /tmp/geokit-cpu.lock .venv/bin/python benchmarks/synthetic_demo.py --output /tmp/demo-bench \
        [--fresh-cache] [--set KEY=VALUE ...]

``--fresh-cache`` points GEOKIT_CACHE at an empty temporary folder, so the time includes
generating the world (what a new user's first run costs). Prints the demo's summary and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--output", required=True)
    ap.add_argument("--fresh-cache", action="store_true")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    out = Path(args.output)
    if out.exists():
        shutil.rmtree(out)  # a finished run folder would make the demo skip training
    env = dict(os.environ, HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1")
    tmp = tempfile.mkdtemp() if args.fresh_cache else None
    if tmp:
        env["GEOKIT_CACHE"] = tmp
    cmd = [str(Path(sys.executable).with_name("geokit")), "demo", "--output", str(out)]
    cmd += [a for s in args.overrides for a in ("--set", s)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    print(proc.stdout)
    if proc.returncode:
        print(proc.stderr[-3000:], file=sys.stderr)
        sys.exit(proc.returncode)
    metrics = json.loads((out / "metrics.json").read_text())
    hist = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    print(
        json.dumps(
            {
                "wall_s": round(wall, 1),
                "metrics": metrics,
                "val_R@1_per_epoch": [h.get("eval/R@1") for h in hist],
                "train_seconds_per_epoch": [h.get("seconds") for h in hist],
                "command": " ".join(cmd[1:]),
            }
        )
    )


if __name__ == "__main__":
    main()
