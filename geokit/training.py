"""The training engine: AdamW, per-step cosine schedule with linear warm-up, value clipping,
optional mixed precision, seeded, resumable at epoch boundaries.

A run folder holds ``config.yaml`` (resolved), ``train.log``, ``metrics.jsonl`` (one line per
epoch), ``state.safetensors`` (resume state, rewritten atomically after every epoch) and, at the
end, ``model.safetensors`` (the shareable weights + record). Running the same command on the same
folder resumes from the last completed epoch.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geokit.checkpoint import atomic_write_text, load_state, save_state
from geokit.config import Config, read_yaml
from geokit.data import PairList
from geokit.errors import GeokitError
from geokit.evaluation import format_table, run_protocol
from geokit.model import Parts, build
from geokit.registry import create
from geokit.runtime import (
    autocast, configure_threads, default_amp, default_workers, log, progress, seed_everything,
    select_device, setup_logging, versions,
)
from geokit.sampling import EpochContext, TrainEmbeddings, rank_slice

STATE = "state.safetensors"
WEIGHTS = "model.safetensors"
# Keys that may differ between a run and its resumption (they do not change the result).
RESUME_FREE = {("train", "workers"), ("train", "device"), ("train", "threads"), ("train", "log_every"),
               ("eval", "batch_size"), ("eval", "chunk_size")}


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up from 0, then a half cosine to 0 at ``total`` steps."""
    if step < warmup:
        return base * (step + 1) / warmup
    span = max(total - warmup, 1)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))


@dataclass
class TrainResult:
    output: Path
    epochs_run: int
    history: list[dict[str, Any]]
    parts: Parts


def _comparable(cfg: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(cfg))
    for sec, key in RESUME_FREE:
        out.get(sec, {}).pop(key, None)
    return out


def train(config: Config, output: str | Path, *, show: bool | None = None) -> TrainResult:
    """Train as configured into ``output`` (resuming when it holds an unfinished run)."""
    import torch

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    setup_logging(output / "train.log")
    cfg_dict = config.to_dict()
    state_path = output / STATE
    if (output / "config.yaml").exists() and (state_path.exists() or (output / WEIGHTS).exists()):
        old = read_yaml(output / "config.yaml")
        if _comparable(old) != _comparable(cfg_dict):
            raise GeokitError(
                f"{output} holds a run with a different config (see {output / 'config.yaml'}); "
                "use another --output, or delete the folder to start over")
    atomic_write_text(output / "config.yaml", config.to_yaml())

    tc = config.train
    configure_threads(tc.threads)
    device = select_device(tc.device)
    amp = default_amp(device) if tc.amp is None else tc.amp
    workers = default_workers(device) if tc.workers is None else tc.workers
    seed_everything(config.seed)

    parts = build(config)
    ds = parts.dataset
    train_set = ds.train_set()
    if len(train_set) < tc.batch_size:
        raise GeokitError(f"dataset '{ds.name}' has {len(train_set)} training pairs, fewer than "
                          f"train.batch_size={tc.batch_size}")
    sampler = create("sampler", config.names["sampler"], config.sampler)
    encoder, loss_fn = parts.encoder.to(device), parts.loss.to(device)
    params = [p for m in (encoder, loss_fn) for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda"
                                  and not torch.cuda.is_bf16_supported())

    steps_per_epoch = max(len(train_set) // tc.batch_size, 1)
    total_steps = tc.epochs * steps_per_epoch
    warmup_steps = int(round(tc.warmup_epochs * steps_per_epoch))
    start_epoch, step, history = 1, 0, []

    if state_path.exists():
        state = load_state(state_path)
        parts.encoder.load_state_dict(state["encoder"])
        parts.loss.load_state_dict(state["loss"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(tuple(state["numpy_rng"]))
        start_epoch, step = int(state["epoch"]) + 1, int(state["step"])
        history = _read_history(output)[: start_epoch - 1]
        log.info("resuming %s after epoch %d (step %d)", output, start_epoch - 1, step)
    if start_epoch > tc.epochs and (output / WEIGHTS).exists():
        log.info("%s already finished %d epochs; nothing to do", output, tc.epochs)
        return TrainResult(output, 0, history, parts)

    log.info("geokit train -> %s\n%s\nversions: %s", output, config.to_yaml().rstrip(),
             json.dumps(versions()))
    log.info("%d training pairs, %d references; device %s, amp %s, workers %d",
             len(train_set), len(train_set.reference_paths), device, amp, workers)

    def embed_train() -> TrainEmbeddings:
        from geokit.embedding import embed_paths

        kw = dict(batch_size=config.eval.batch_size, device=device, amp=amp, workers=workers, show=show)
        q = embed_paths(encoder, ds, train_set.query_paths, ds.query_size, parts.norm,
                        desc="mine queries", **kw)
        r = embed_paths(encoder, ds, train_set.reference_paths, ds.reference_size, parts.norm,
                        desc="mine references", **kw)
        return TrainEmbeddings(q, r)

    pairs = PairList(ds, train_set, parts.norm, seed=config.seed)
    epochs_run = 0
    for epoch in range(start_epoch, tc.epochs + 1):
        t0 = time.perf_counter()
        ctx = EpochContext(epoch=epoch, epochs=tc.epochs, batch_size=tc.batch_size, seed=config.seed,
                           train=train_set, dataset_name=ds.name, embed=embed_train)
        batches = [rank_slice(b, ctx.rank, ctx.world_size) for b in sampler.batches(ctx)]
        if not batches:
            raise GeokitError(f"sampler '{config.names['sampler']}' produced no batches for epoch {epoch}")
        pairs.epoch = epoch
        loader = torch.utils.data.DataLoader(pairs, batch_sampler=batches, num_workers=workers,
                                             pin_memory=device.type == "cuda")
        encoder.train()
        loss_sum, n_steps, n_images = 0.0, 0, 0
        for q, r in progress(loader, total=len(batches), desc=f"epoch {epoch}/{tc.epochs}", enabled=show):
            lr = lr_at(step, total_steps, warmup_steps, tc.lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            q, r = q.to(device, non_blocking=True), r.to(device, non_blocking=True)
            with autocast(device, amp):
                qe, re_ = encoder(q), encoder(r)
            loss = loss_fn(qe.float(), re_.float())
            if not torch.isfinite(loss):
                raise GeokitError(
                    f"the loss became {loss.item()} at epoch {epoch}, step {step + 1}: training "
                    f"stopped. The last good state is {state_path if state_path.exists() else 'none yet'}; "
                    "try a lower train.lr or train.amp=false")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if tc.clip_value is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_value_(params, tc.clip_value)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            n_steps += 1
            n_images += 2 * len(q)
            loss_sum += loss.item()
            if step % tc.log_every == 0:
                log.info("epoch %d step %d loss %.4f lr %.2e", epoch, step, loss.item(), lr)
        seconds = time.perf_counter() - t0
        row: dict[str, Any] = {"epoch": epoch, "step": step, "loss": loss_sum / max(n_steps, 1),
                               "lr": lr, "batches": n_steps, "seconds": round(seconds, 3),
                               "images_per_s": round(n_images / max(seconds, 1e-9), 2)}
        row.update({f"loss.{k}": float(v.detach().float().mean())
                    for k, v in loss_fn.named_parameters() if v.numel() == 1})
        log.info("epoch %d/%d: loss %.4f, %d batches, %.1f s (%.1f images/s)", epoch, tc.epochs,
                 row["loss"], n_steps, seconds, row["images_per_s"])
        if tc.eval_every and (epoch % tc.eval_every == 0 or epoch == tc.epochs):
            res = run_protocol(parts, device=device, show=show)
            row.update({f"eval/{k}": v for k, v in res.metrics.items()})
            log.info(format_table(res.metrics, f"epoch {epoch}: {ds.name} / {res.eval_set.name}"))
        history.append(row)
        _append_history(output, row)
        save_state(state_path, {
            "epoch": epoch, "step": step, "encoder": encoder.state_dict(), "loss": loss_fn.state_dict(),
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "sampler": sampler.state_dict(), "torch_rng": torch.get_rng_state(),
            "numpy_rng": list(np.random.get_state()),
        })
        epochs_run += 1

    parts.save(output / WEIGHTS, epochs=tc.epochs, steps=step)
    log.info("wrote %s", output / WEIGHTS)
    return TrainResult(output, epochs_run, history, parts)


def _append_history(output: Path, row: dict[str, Any]) -> None:
    rows = _read_history(output)
    rows = [r for r in rows if r.get("epoch") != row["epoch"]] + [row]
    atomic_write_text(output / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def _read_history(output: Path) -> list[dict[str, Any]]:
    path = output / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def evaluate_after_training(result: TrainResult, split: str | None = None) -> dict[str, float]:
    """Evaluate the trained parts in memory (no reload)."""
    res = run_protocol(result.parts, split)
    log.info(format_table(res.metrics, f"{result.parts.dataset.name} {res.eval_set.name}"))
    return res.metrics
