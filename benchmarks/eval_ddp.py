"""``geokit evaluate`` and ``geokit index build``: one process vs N gloo ranks under torchrun.

Generates a pairs dataset (``--pairs`` test pairs at ``--size`` px), saves a random-init
ConvNeXt-Atto checkpoint, then times the commands (wall time of the whole command, start-up
included), interleaved round by round, and checks that the metrics and index vectors agree.

    python benchmarks/eval_ddp.py --pairs 256 --size 64 --ranks 2 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()

    import numpy as np
    import torch
    import yaml

    from geokit.config import resolve
    from geokit.model import build
    from geokit.retrieval import GeoIndex
    from geokit.testing import make_pairs_dataset, tiny_config

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = make_pairs_dataset(tmp / "data", n_train=8, n_test=a.pairs, size=a.size)
        cfg = tiny_config(
            root,
            dataset={"query_size": [a.size, 4 * a.size], "reference_size": [a.size, a.size]},
            eval={"batch_size": 32},
        )
        (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg))
        torch.manual_seed(0)
        build(resolve(cfg)).save(tmp / "m.safetensors")
        geokit = [sys.executable, "-m", "geokit"]
        ddp = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(a.ranks),
            "-m",
            "geokit",
        ]
        env1 = dict(os.environ, OMP_NUM_THREADS=str(a.ranks), GEOKIT_PROGRESS="0")
        envn = dict(os.environ, OMP_NUM_THREADS="1", GEOKIT_PROGRESS="0")
        jobs = {}
        for name, prefix, env in (("1 process", geokit, env1), (f"{a.ranks} ranks", ddp, envn)):
            tag = name.split()[0]
            jobs[("evaluate", name)] = (
                prefix
                + [
                    "evaluate",
                    "--config",
                    str(tmp / "cfg.yaml"),
                    "--checkpoint",
                    str(tmp / "m.safetensors"),
                    "--output",
                    str(tmp / f"m{tag}.json"),
                ],
                env,
            )
            jobs[("index build", name)] = (
                prefix
                + [
                    "index",
                    "build",
                    "--checkpoint",
                    str(tmp / "m.safetensors"),
                    "--config",
                    str(tmp / "cfg.yaml"),
                    "--output",
                    str(tmp / f"i{tag}.index"),
                ],
                env,
            )
        times: dict[tuple[str, str], list[float]] = {k: [] for k in jobs}
        for _ in range(a.rounds):
            for k, (cmd, env) in jobs.items():
                times[k].append(run(cmd, env))
        m1 = json.loads((tmp / "m1.json").read_text())
        mn = json.loads((tmp / f"m{a.ranks}.json").read_text())
        v1 = GeoIndex.load(tmp / "i1.index").vectors
        vn = GeoIndex.load(tmp / f"i{a.ranks}.index").vectors
        print(
            f"{a.pairs} pairs at {a.size}x{4 * a.size} / {a.size}x{a.size} px, ConvNeXt-Atto, "
            f"{os.cpu_count()} CPUs; medians of {a.rounds} rounds (wall time of the command)"
        )
        for k, ts in times.items():
            print(f"  {k[0]:<12} {k[1]:<10} {statistics.median(ts):6.1f} s   {[round(t, 1) for t in ts]}")
        print(f"  metrics equal: {m1 == mn}; index vectors max abs diff {float(np.abs(v1 - vn).max()):.1e}")


if __name__ == "__main__":
    main()
