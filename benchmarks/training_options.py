"""Speed of the training engine's precision and layout options on this machine.

Training steps (``geokit.engine.TrainStep``: forward both views, symmetric InfoNCE, backward,
value clipping, AdamW) and inference-mode embedding, for small timm ConvNeXt models at 64 and
128 px, with: float32, bf16 autocast, channels_last, and both. The configurations are
interleaved round by round so that load from other processes hits them alike; the median of the
rounds is reported.

    flock /tmp/geokit-cpu.lock .venv/bin/python benchmarks/training_options.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="convnext_atto,convnext_femto")
    ap.add_argument("--sizes", default="64,128")
    ap.add_argument("--pairs", type=int, default=16, help="pairs per training step (2x images)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    import torch

    from geokit.engine import TrainStep
    from geokit.registry import create
    from geokit.runtime import autocast, cpu_has_bf16

    device = torch.device("cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, AVX512_BF16/AMX: {cpu_has_bf16()}")
    options = {
        "fp32": (False, False),
        "bf16": (True, False),
        "channels_last": (False, True),
        "bf16+channels_last": (True, True),
    }
    results = []
    for model in args.models.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            runs = {}
            for name, (amp, cl) in options.items():
                torch.manual_seed(0)
                enc = create("encoder", "convnext", {"model": model, "pretrained": False})
                loss = create("loss", "infonce", {})
                if cl:
                    enc.to(memory_format=torch.channels_last)
                opt = torch.optim.AdamW([*enc.parameters(), *loss.parameters()], lr=1e-4)
                step = TrainStep(enc, loss, opt, device=device, amp=amp, clip_value=100.0, channels_last=cl)
                g = torch.Generator().manual_seed(0)
                q = torch.randn(args.pairs, 3, size, size, generator=g)
                r = torch.randn(args.pairs, 3, size, size, generator=g)
                e = torch.randn(64, 3, size, size, generator=g)
                if cl:
                    e = e.contiguous(memory_format=torch.channels_last)
                step.step(q, r, 1e-4)  # warm-up (oneDNN primitive creation)
                runs[name] = dict(step=step, q=q, r=r, e=e, enc=enc, amp=amp, train=[], embed=[])
            for _ in range(args.rounds):
                for run in runs.values():
                    t = time.perf_counter()
                    for _ in range(args.steps):
                        run["step"].step(run["q"], run["r"], 1e-4)
                    run["train"].append(2 * args.pairs * args.steps / (time.perf_counter() - t))
                    run["enc"].eval()
                    with torch.inference_mode(), autocast(device, run["amp"]):
                        t = time.perf_counter()
                        run["enc"](run["e"])
                        run["embed"].append(len(run["e"]) / (time.perf_counter() - t))
                    run["enc"].train()
            base = runs["fp32"]
            for name, run in runs.items():
                tr, em = statistics.median(run["train"]), statistics.median(run["embed"])
                row = dict(
                    model=model,
                    size=size,
                    option=name,
                    train_img_s=round(tr, 1),
                    embed_img_s=round(em, 1),
                    train_speedup=round(tr / statistics.median(base["train"]), 2),
                    embed_speedup=round(em / statistics.median(base["embed"]), 2),
                )
                results.append(row)
                print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
