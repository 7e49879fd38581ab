"""Overhead of geokit's training step against a bare torch loop, same model, same batch.

Four ways to run the same optimisation steps (ConvNeXt-Atto, 64 px, 16 pairs per step,
symmetric InfoNCE, value clipping at 100, AdamW, fp32 on the CPU):

- ``bare``: a hand-written loop over the epoch's batches as pre-built tensors (zero_grad, two
  forwards, loss, backward, clip, step), one model trained on through all rounds.
- ``bare_fresh``: the same loop on a fresh model every round, timing its second pass over the
  batches, so its weights and optimizer state have the age of the engine's (second epoch).
- ``trainstep``: :class:`geokit.engine.TrainStep` over the same pre-built tensors, plus the
  engine's per-step bookkeeping (learning-rate schedule, per-step re-seeding).
- ``engine``: a whole :func:`geokit.engine.train` epoch on an in-memory dataset (decoded
  images held in memory, no augmentation): DataLoader, collation, normalisation, per-step
  bookkeeping, logging. Its seconds are the second epoch's row (warm model and loader, like
  the other two after their warm-up; checkpoint writing excluded).

The engine raises glibc's malloc thresholds on the CPU (``geokit.runtime.keep_freed_memory``);
that is process-wide, so the script applies it before any loop runs and all four share it.
``--glibc-default`` runs everything with glibc's defaults instead (``GEOKIT_MALLOC_TUNING=0``).
Minor page faults per step (``getrusage``) are reported for each loop.

Rounds are interleaved so that load from other processes hits all alike; medians reported.

    flock /tmp/geokit-cpu.lock .venv/bin/python benchmarks/training_overhead.py [--rounds 5] [--glibc-default]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("GEOKIT_PROGRESS", "0")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="convnext_atto")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--glibc-default", action="store_true", help="leave glibc malloc at its defaults")
    args = ap.parse_args()
    if args.glibc_default:
        os.environ["GEOKIT_MALLOC_TUNING"] = "0"

    import logging

    import torch
    import torch.nn.functional as F

    import geokit.engine as T
    from geokit.config import resolve
    from geokit.data import CrossViewDataset, TrainSet
    from geokit.registry import create
    from geokit.runtime import keep_freed_memory, log
    from geokit.testing import tiny_config

    tuned = keep_freed_memory()  # what the engine does on the CPU; a no-op with --glibc-default
    size, pairs, steps = args.size, args.pairs, args.steps
    n = pairs * steps
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2 * n, size, size, 3), dtype=np.uint8)

    class InMemory(CrossViewDataset):
        name = "in_memory"
        query_size = reference_size = (size, size)

        def train_set(self) -> TrainSet:
            return TrainSet([f"q{i}" for i in range(n)], [f"r{i}" for i in range(n)], np.arange(n))

        def load_image(self, path: str, _size: tuple[int, int]) -> np.ndarray:
            return images[int(path[1:]) + (n if path[0] == "r" else 0)]

    cfg = resolve(
        tiny_config(
            Path("unused"),
            encoder={"model": args.model},
            train={"epochs": 2, "batch_size": pairs, "warmup_epochs": 0.0, "lr": 1e-4, "log_every": 10**6},
        )
    )
    mean, std = (
        torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1),
        torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1),
    )
    # The epoch's batches, decoded and normalised in advance: bare and trainstep loop over the
    # same 10 batches (a loop over one fixed batch measured a few % faster: its inputs stay hot).
    order = np.random.default_rng(0).permutation(n)
    batches = []
    for k in range(steps):
        idx = order[k * pairs : (k + 1) * pairs]
        q = (torch.from_numpy(images[idx]).permute(0, 3, 1, 2).float() / 255 - mean) / std
        r = (torch.from_numpy(images[n + idx]).permute(0, 3, 1, 2).float() / 255 - mean) / std
        batches.append((q.contiguous(), r.contiguous()))

    def fresh():
        torch.manual_seed(0)
        enc = create("encoder", "convnext", {"model": args.model, "pretrained": False})
        loss = create("loss", "infonce", {})
        params = [*enc.parameters(), *loss.parameters()]
        return enc, loss, params, torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)

    def minflt() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    # Each loop returns (seconds per step, minor page faults per step) of its timed steps.
    def bare_steps(model) -> tuple[float, float]:
        enc_b, loss_b, params_b, opt_b = model
        f, t = minflt(), time.perf_counter()
        for q, r in batches:
            for g in opt_b.param_groups:
                g["lr"] = 1e-4
            opt_b.zero_grad(set_to_none=True)
            qe, re_ = enc_b(q), enc_b(r)
            qn, rn = F.normalize(qe, dim=-1), F.normalize(re_, dim=-1)
            logits = loss_b.logit_scale.exp() * qn @ rn.t()
            target = torch.arange(len(qn))
            value = 0.5 * (
                F.cross_entropy(logits, target, label_smoothing=0.1)
                + F.cross_entropy(logits.t(), target, label_smoothing=0.1)
            )
            value.backward()
            torch.nn.utils.clip_grad_value_(params_b, 100.0)
            opt_b.step()
            value.item()
        return (time.perf_counter() - t) / steps, (minflt() - f) / steps

    old_model = fresh()

    def bare() -> tuple[float, float]:
        return bare_steps(old_model)

    def bare_fresh() -> tuple[float, float]:
        model = fresh()
        bare_steps(model)  # the first epoch
        return bare_steps(model)

    enc_s, loss_s, _, opt_s = fresh()
    stepper = T.TrainStep(enc_s, loss_s, opt_s, device=torch.device("cpu"), clip_value=100.0)
    counter = {"step": 0}

    def trainstep() -> tuple[float, float]:
        f, t = minflt(), time.perf_counter()
        for q, r in batches:
            lr = T.lr_at(counter["step"], 10**6, 0, 1e-4)
            torch.manual_seed(T.step_seed(0, counter["step"]))
            stepper.step(q, r, lr)
            counter["step"] += 1
        return (time.perf_counter() - t) / steps, (minflt() - f) / steps

    log.setLevel(logging.WARNING)
    import geokit.engine._loop as L
    import geokit.engine._setup as S

    real_build = S.build
    S.build = lambda config, **kw: real_build(config, dataset=InMemory())  # type: ignore[assignment]
    tmp = Path(tempfile.mkdtemp(prefix="geokit-overhead-"))

    real_epoch = L.Engine._epoch
    engine_faults: list[int] = []

    def counted_epoch(self: Any, epoch: int, resume: Any) -> None:  # page faults of each engine epoch
        f = minflt()
        real_epoch(self, epoch, resume)
        engine_faults.append(minflt() - f)

    L.Engine._epoch = counted_epoch  # type: ignore[method-assign]

    def engine() -> tuple[float, float]:
        out = tmp / f"run{time.monotonic_ns()}"
        res = T.train(cfg, out, show=False)
        log.setLevel(logging.WARNING)
        row = res.history[-1]
        assert row["batches"] == steps
        return row["seconds"] / steps, engine_faults[-1] / steps

    loops = {"bare": bare, "bare_fresh": bare_fresh, "trainstep": trainstep, "engine": engine}
    for fn in (bare, trainstep):  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in loops}
    faults: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(args.rounds):
        for name, fn in loops.items():
            sec, flt = fn()
            times[name].append(sec)
            faults[name].append(flt)
    base, base_fresh = statistics.median(times["bare"]), statistics.median(times["bare_fresh"])
    print(
        f"{args.model} {size}px, {pairs} pairs/step, {steps} steps x {args.rounds} rounds, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"malloc {'tuned (keep_freed_memory)' if tuned else 'glibc defaults'}"
    )
    for name, ts in times.items():
        med = statistics.median(ts)
        print(
            json.dumps(
                {
                    "loop": name,
                    "ms_per_step_median": round(1000 * med, 1),
                    "ms_all": [round(1000 * t, 1) for t in ts],
                    "overhead_vs_bare_pct": round(100 * (med / base - 1), 1),
                    "vs_bare_fresh_pct": round(100 * (med / base_fresh - 1), 1),
                    "minor_faults_per_step_median": round(statistics.median(faults[name])),
                }
            )
        )


if __name__ == "__main__":
    main()
