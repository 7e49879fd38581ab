"""DDP on the CPU (2 gloo ranks under torchrun) against one process, same config and seed.

Both runs train ConvNeXt-Atto at 64 px on a generated pairs dataset with the same global
batches (random sampler, seeded). Reported: per-step loss agreement (``steps.jsonl``), the
maximum weight difference at the end, and throughput (images/s of the last epoch from
``metrics.jsonl``, and wall time of the whole command including start-up).
The single process uses 2 torch threads; each rank uses 1 (2 cores in all, torchrun's default).

    flock /tmp/geokit-cpu.lock .venv/bin/python benchmarks/training_ddp.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("GEOKIT_PROGRESS", "0")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=192)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()

    import yaml

    from geokit.engine import read_steps
    from geokit.testing import make_pairs_dataset, tiny_config

    tmp = Path(tempfile.mkdtemp(prefix="geokit-ddp-"))
    root = make_pairs_dataset(tmp / "data", n_train=args.pairs, n_test=16, size=args.size)
    s = args.size
    cfg = tiny_config(
        root,
        dataset={"query_size": [s, s], "reference_size": [s, s]},
        train={"epochs": args.epochs, "batch_size": args.batch, "log_every": 1},
    )
    cfg_path = tmp / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    exe = [sys.executable]
    runs = {
        "1 process, 2 threads": exe + ["-m", "geokit", "train", "--set", "train.threads=2"],
        "2 gloo ranks, 1 thread each": exe
        + ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "geokit", "train"],
    }
    out = {}
    for name, cmd in runs.items():
        folder = tmp / name.split()[0]
        t = time.perf_counter()
        proc = subprocess.run(
            cmd + ["--config", str(cfg_path), "--output", str(folder)], capture_output=True, text=True
        )
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise SystemExit(proc.stdout[-2000:] + proc.stderr[-2000:])
        rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
        out[name] = dict(folder=folder, wall=wall, steps=read_steps(folder), rows=rows)

    import torch
    from safetensors.torch import load_file

    (_a_name, a), (_b_name, b) = out.items()
    la = torch.tensor([r["loss"] for r in a["steps"]], dtype=torch.float64)
    lb = torch.tensor([r["loss"] for r in b["steps"]], dtype=torch.float64)
    wa, wb = load_file(a["folder"] / "model.safetensors"), load_file(b["folder"] / "model.safetensors")
    wdiff = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    print(
        f"convnext_atto {s}px, {args.pairs} pairs, global batch {args.batch}, {args.epochs} epochs "
        f"({len(la)} steps), torch {torch.__version__}"
    )
    print(
        json.dumps(
            {
                "steps_compared": len(la),
                "max_abs_loss_diff": float((la - lb).abs().max()),
                "max_rel_loss_diff": float(((la - lb).abs() / la.abs()).max()),
                "max_abs_weight_diff": wdiff,
            }
        )
    )
    for name, r in out.items():
        last = r["rows"][-1]
        print(
            json.dumps(
                {
                    "run": name,
                    "last_epoch_images_per_s": last["images_per_s"],
                    "last_epoch_seconds": last["seconds"],
                    "wall_s": round(r["wall"], 1),
                }
            )
        )


if __name__ == "__main__":
    main()
