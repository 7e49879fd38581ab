"""Ablations on the synthetic world: samplers (random vs gps vs gps→dss and variants), shared vs
separate encoder weights per view, full panorama vs a 90° field of view; several seeds.

Every run is ``geokit train`` on the demo config (``plugins/datasets/synthetic/demo.yaml``) with the
condition's overrides (a sampler condition replaces the whole sampler section) and per-epoch
evaluation off, then ``geokit evaluate`` of the final weights
on the ``val`` split (used to choose) and the ``test`` split (reported). Wall time of training
(including DSS mining) is recorded per run so the budgets can be compared.

    .venv/bin/python benchmarks/samplers_ablation.py --out /tmp/sampler-ablation --seeds 1 2 \\
        --conditions random gps gps_dss

Each run (train + its evaluations) takes the shared CPU lock ``/tmp/geokit-cpu.lock`` itself,
so other people's jobs can interleave between runs and every timing is clean.

Results are appended to ``OUT/results.jsonl`` (a finished run is skipped when re-run) and a
markdown table is printed.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GEOKIT = str(ROOT / ".venv" / "bin" / "geokit")
LOCK = "/tmp/geokit-cpu.lock"
DEMO = ROOT / "plugins" / "synthetic" / "demo.yaml"

SAMPLERS: dict[str, list[str]] = {
    "random": ["sampler.name=random"],
    "gps": ["sampler.name=gps"],
    "gps_dss": ["sampler.name=dss", "sampler.every=4"],  # Sample4Geo: GPS epochs 1-4, DSS from 5, re-mined /4
    "gps_half": ["sampler.name=gps", "sampler.hard_fraction=0.5"],
    "gps_dss_half": ["sampler.name=dss", "sampler.every=4", "sampler.hard_fraction=0.5"],
    "random_dss": ["sampler.name=dss", "sampler.every=4", "sampler.warm_start=random"],
    "random_dss_half": [
        "sampler.name=dss",
        "sampler.every=4",
        "sampler.warm_start=random",
        "sampler.hard_fraction=0.5",
    ],
    "random_dss_late": [
        "sampler.name=dss",
        "sampler.every=6",
        "sampler.warm_start=random",
        "sampler.hard_fraction=0.5",
    ],
    "gps_small": ["sampler.name=gps", "sampler.select=4", "sampler.range=16"],
    "gps_deep": ["sampler.name=gps", "sampler.select=8", "sampler.range=64", "sampler.hard_fraction=0.5"],
}
CONDITIONS: dict[str, list[str]] = {
    # "sampler={}" first: a sampler condition replaces the config's whole sampler section
    **{name: ["sampler={}", *sets] for name, sets in SAMPLERS.items()},
    "demo": [],  # the demo config as it is (shared weights, full panorama)
    "separate": ["encoder.shared=false"],  # one ConvNeXt branch per view (Sample4Geo's ablation)
    "fov90": ["transforms=[{name: limited_fov, fov: 90}]"],  # a 90° window at an unknown azimuth
}
METRICS = (
    "R@1",
    "R@5",
    "R@10",
    "R@1%",
    "median_error_m",
    "within_25m",
    "within_50m",
    "within_100m",
    "queries",
    "references",
)


def run(cmd: list[str], log: Path) -> None:
    with open(log, "a") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)} — see {log}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("/tmp/sampler-ablation"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--conditions", nargs="+", default=["random", "gps", "gps_dss"])
    ap.add_argument("--config", type=Path, default=DEMO)
    ap.add_argument("--set", dest="extra", action="append", default=[], help="extra overrides for every run")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    done = (
        {(r["condition"], r["seed"]) for r in map(json.loads, results.read_text().splitlines())}
        if results.exists()
        else set()
    )
    for cond in args.conditions:
        for seed in args.seeds:
            if (cond, seed) in done:
                continue
            lock = open(LOCK, "a")  # noqa: SIM115 - held across the run, released below
            fcntl.flock(lock, fcntl.LOCK_EX)
            d = args.out / f"{cond}-s{seed}"
            # "sampler={}" first: the condition replaces the config's whole sampler section
            sets = [f"seed={seed}", "train.eval_every=0", *CONDITIONS[cond], *args.extra]
            flags = [x for s in sets for x in ("--set", s)]
            t0 = time.perf_counter()
            run([GEOKIT, "train", "--config", str(args.config), *flags, "--output", str(d)], d.with_suffix(".log"))
            seconds = time.perf_counter() - t0
            row = {"condition": cond, "seed": seed, "sets": sets, "train_seconds": round(seconds, 1)}
            for split in ("val", "test"):
                out = d / f"eval-{split}.json"
                run(
                    [
                        GEOKIT,
                        "evaluate",
                        "--config",
                        str(d / "config.yaml"),
                        "--checkpoint",
                        str(d / "model.safetensors"),
                        "--set",
                        f"eval.split={split}",
                        "--output",
                        str(out),
                    ],
                    d.with_suffix(".log"),
                )
                m = json.loads(out.read_text())
                row[split] = {k: m[k] for k in METRICS if k in m}
            lock.close()  # releases the lock
            with open(results, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    table(results)


def table(results: Path) -> None:
    import statistics as st

    rows = [json.loads(x) for x in results.read_text().splitlines()]
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["condition"], []).append(r)
    print(
        "| condition | seeds | train s | val R@1 | test R@1 | test R@5 | test R@1% | test median error m "
        "| per seed test R@1 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for cond, rs in by.items():

        def mean(split: str, k: str) -> str:
            v = [r[split][k] for r in rs if k in r[split]]
            if not v:
                return "–"
            return f"{st.mean(v):.1f}" + (f" ± {st.stdev(v):.1f}" if len(v) > 1 else "")

        print(
            f"| {cond} | {len(rs)} | {st.mean(r['train_seconds'] for r in rs):.0f} | {mean('val', 'R@1')} | "
            f"{mean('test', 'R@1')} | {mean('test', 'R@5')} | {mean('test', 'R@1%')} | "
            f"{mean('test', 'median_error_m')} | "
            f"{', '.join(format(r['test']['R@1'], '.1f') for r in rs)} |"
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--table"]:
        table(Path(sys.argv[2]) / "results.jsonl")
    else:
        main()
