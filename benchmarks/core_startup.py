"""How long `geokit --help` and `geokit plugins` take (plugin discovery runs on every start).

    .venv/bin/python benchmarks/core_startup.py [--runs 7]

Prints the median and best wall time of each command, and whether torch got imported.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def timed(args: list[str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "geokit", *args], check=True, capture_output=True)
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    runs = ap.parse_args().runs
    base = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        base.append(time.perf_counter() - t)
    print(f"python -c pass        median {statistics.median(base):.3f} s  best {min(base):.3f} s")
    for args in (["--help"], ["plugins"]):
        t = timed(args, runs)
        print(f"geokit {' '.join(args):<14} median {statistics.median(t):.3f} s  best {min(t):.3f} s")
    code = (
        "import sys\nfrom geokit.cli import main\ntry:\n    main(['plugins'])\nexcept SystemExit:\n    pass\n"
        "print('torch imported:', 'torch' in sys.modules, file=sys.stderr)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    print(res.stderr.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
