"""How long the benchmark loaders take on full-size split files (CVUSA, VIGOR same-area).

Writes full-size lists (CVUSA: 35,532 + 8,884 rows and a 44,416-row all.csv; VIGOR: 4 cities,
90,618 tiles, 105,214 panoramas in 13-column label files) with *empty* image files (the loaders
only list folders; decoding is ``verify``'s job), then times building the dataset, its training
set and its evaluation set, and ``geokit.verify.verify_dataset`` without decoding.

    flock /tmp/geokit-cpu.lock .venv/bin/python benchmarks/datasets_load.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def touch_all(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        with open(folder / n, "wb"):
            pass


def make_cvusa(root: Path) -> None:
    (root / "splits").mkdir(parents=True)
    (root / "split_locations").mkdir()
    ids = np.random.default_rng(0).permutation(np.arange(1, 44_417))
    for fname, part in (("train-19zl.csv", ids[:35_532]), ("val-19zl.csv", ids[35_532:])):
        (root / "splits" / fname).write_text(
            "".join(
                f"bingmap/19/{i:07d}.jpg,streetview/panos/{i:07d}.jpg,streetview/annotations/{i:07d}.png\n"
                for i in part
            )
        )
    (root / "split_locations/all.csv").write_text(
        "".join(f"{30 + i * 1e-4},{-100 + i * 1e-4},{30 + i * 1e-4},{-100 + i * 1e-4},0\n" for i in range(1, 44_417))
    )
    touch_all(root / "bingmap/19", [f"{i:07d}.jpg" for i in ids])
    touch_all(root / "streetview/panos", [f"{i:07d}.jpg" for i in ids])


def make_vigor(root: Path) -> None:
    rng = np.random.default_rng(0)
    cities = ("Chicago", "NewYork", "SanFrancisco", "Seattle")
    n_sats = np.full(4, 90_618 // 4) + np.r_[90_618 % 4, 0, 0, 0]
    n_panos = np.full(4, 105_214 // 4) + np.r_[105_214 % 4, 0, 0, 0]
    for c, city in enumerate(cities):
        sats = [f"satellite_{40 + c + 1e-5 * j:.10f}_{-80 - 1e-5 * j:.10f}.png" for j in range(n_sats[c])]
        (root / "splits" / city).mkdir(parents=True)
        (root / "splits" / city / "satellite_list.txt").write_text("".join(s + "\n" for s in sats))
        touch_all(root / "satellite" / city, sats)
        lines, panos = [], []
        for k in range(n_panos[c]):
            pos = int(rng.integers(len(sats)))
            pano = f"p{c}_{k:07d}xyz,{40 + c:.6f},{-80:.6f},.jpg"
            panos.append(pano)
            cols = [pano, sats[pos], "1.0", "2.0"]
            for d in (1, 2, 3):
                cols += [sats[(pos + d) % len(sats)], "3.0", "4.0"]
            lines.append(" ".join(cols) + "\n")
        touch_all(root / "ground" / city, panos)
        half = len(lines) // 2
        (root / "splits" / city / "same_area_balanced_train.txt").write_text("".join(lines[:half]))
        (root / "splits" / city / "same_area_balanced_test.txt").write_text("".join(lines[half:]))
        (root / "splits" / city / "pano_label_balanced.txt").write_text("".join(lines))


def timed(label: str, fn):
    t = time.perf_counter()
    out = fn()
    print(f"  {label:<34} {time.perf_counter() - t:7.2f} s")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", help="write the layouts here and keep them")
    args = ap.parse_args()
    from geokit.registry import create
    from geokit.verify import verify_dataset

    base = Path(args.keep or tempfile.mkdtemp(prefix="geokit-dsload-"))
    try:
        for name, maker, opts in (("cvusa", make_cvusa, {}), ("vigor", make_vigor, {"mode": "same"})):
            root = base / name
            if not root.exists():
                t = time.perf_counter()
                maker(root)
                print(f"{name}: wrote the layout in {time.perf_counter() - t:.1f} s")
            print(f"{name} (cold: first listing of each folder)")
            ds = timed("build dataset", lambda: create("dataset", name, {"root": str(root), **opts}))
            tr = timed("train_set()", ds.train_set)
            es = timed("eval_set()", ds.eval_set)
            print(
                f"  -> {len(tr):,} train pairs, {len(tr.reference_paths):,} references; "
                f"{len(es.query_paths):,} x {len(es.reference_paths):,} test"
            )
            ds2 = create("dataset", name, {"root": str(root), **opts})
            rep = timed("verify (no decoding)", lambda: verify_dataset(ds2, sample=0))
            print(f"  -> {rep.images_listed:,} images checked, {len(rep.problems.errors)} errors")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print(f"machine: {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
