"""Starting a run: :func:`train` (the run-folder lock, distributed set-up and teardown) and
:func:`prepare`, which does all of a run's set-up in order and returns a fully-formed
:class:`~geokit.engine._loop.Engine` (or, for a run that already finished, its result)."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from geokit import distributed as D
from geokit.checkpoint import atomic_write_text
from geokit.config import Config, TrainConfig
from geokit.data import PairList, TrainSet
from geokit.engine._feed import EpochBatches, SamplerFeed
from geokit.engine._loop import Engine, TrainingInterrupted, TrainResult
from geokit.engine._resume import ResumeState, check_resume_config
from geokit.engine._rundir import STATE, WEIGHTS, check_writable, clean_temp_files, lock_output, read_history
from geokit.engine._schedule import Schedule
from geokit.engine._step import TrainStep, collate_pairs
from geokit.errors import GeokitError
from geokit.model import build, build_component
from geokit.registry import origin
from geokit.runtime import (
    TensorBoard,
    amp_setting,
    configure_threads,
    default_channels_last,
    default_workers,
    keep_freed_memory,
    log,
    setup_logging,
    versions,
)
from geokit.sampling import CheckedSampler


def train(config: Config, output: str | Path, *, show: bool | None = None, force: bool = False) -> TrainResult:
    """Train as configured into ``output`` (resuming when it holds an unfinished run).

    Under torchrun every rank calls this; each returns the same result. One run per folder: a
    second run on a folder in use is refused (an OS lock, released when the process ends, even
    by a crash). Resuming with a config that differs from the saved one is refused, naming the
    keys, unless only ``train.epochs`` was raised (the schedule is extended) or ``force`` is set.
    """
    world, device = D.setup(config.train.device, config.train.dist_timeout)
    clean = False
    lock = None
    try:
        lock = lock_output(Path(output)) if world.is_main else None
        engine = prepare(config, Path(output), world, device, show=show, force=force)
        result = engine if isinstance(engine, TrainResult) else engine.run()
        clean = True
        return result
    except TrainingInterrupted:
        clean = True  # every rank stopped after the same step
        raise
    except GeokitError:
        raise
    except Exception as exc:
        if world.distributed and D.is_comm_error(exc):
            raise D.comm_error(world, "a collective operation", exc) from None
        raise
    finally:
        if lock is not None:
            lock.close()  # releases the lock; the (empty) lock file may stay
        D.teardown(world, clean=clean)


def prepare(
    config: Config, output: Path, world: D.World, device: Any, *, show: bool | None, force: bool = False
) -> Engine | TrainResult:
    """Everything before the first step, in this order (the order keeps resumed runs exact):
    the folder and its log, the config check, the runtime, the seeds, the model, optimizer and
    sampler, the resume state, then the step, data set and loader. A run that already
    finished all its epochs returns its :class:`TrainResult` instead (nothing to do)."""
    import torch

    tc = config.train
    extended_from = _open_folder(config, output, world, force)
    configure_threads(tc.threads)
    if device.type == "cpu":  # before the model exists, so its buffers and every step's use the tuned heap
        keep_freed_memory()
    amp = amp_setting(device, tc.amp, tc.amp_dtype)  # False, or the autocast dtype name
    workers = default_workers(device) if tc.workers is None else tc.workers
    channels_last = default_channels_last(device) if tc.channels_last is None else tc.channels_last
    torch.manual_seed(config.seed)  # the same initial weights on every rank and every run
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)

    parts = build(config)
    assert parts.context is not None  # build() makes one
    train_set = parts.context.train_set  # listed once, shared with factories
    _check_batch_size(tc, train_set, world, parts.dataset.name)
    name = config.names["sampler"]
    sampler = CheckedSampler(
        build_component("sampler", name, config.sampler, parts.context.for_kind("sampler")),
        f"sampler '{name}' {origin('sampler', name)}",
    )
    encoder, loss_fn = parts.encoder.to(device), parts.loss.to(device)
    if channels_last:
        encoder.to(memory_format=torch.channels_last)
    params = [p for m in (encoder, loss_fn) for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    if world.is_main:
        _check_space(output, [encoder, loss_fn])
    # fp16 needs a loss scaler; initial scale 2^10 as the released code (its CPU version works too)
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0**10, enabled=amp == "float16")
    schedule = Schedule.plan(tc, train_set, parts.dataset.name)

    resume = _find_state(output, world, device)
    history: list[dict[str, Any]] = []
    if resume is not None:
        resume.restore(
            output / STATE, encoder=encoder, loss=loss_fn, optimizer=optimizer, scaler=scaler, sampler=sampler
        )
        done = resume.epoch if resume.epoch_done else resume.epoch - 1
        history = [r for r in read_history(output) if int(r.get("epoch", 0)) <= done]
        log.info("resuming %s %s (step %d)", output, resume.where(), resume.step)
    step = resume.step if resume is not None else 0
    start_epoch = resume.next_epoch if resume is not None else 1
    if start_epoch > tc.epochs and (output / WEIGHTS).exists():
        log.info("%s already finished %d epochs; nothing to do", output, tc.epochs)
        return TrainResult(output, 0, history, parts)

    if resume is not None and extended_from is not None:
        log.info(
            "train.epochs raised from %d to %d: the cosine schedule is recomputed for %d steps "
            "(warm-up unchanged); at step %d the lr continues at %.3g instead of %.3g on the old "
            "schedule",
            extended_from,
            tc.epochs,
            schedule.total_steps,
            step,
            schedule.lr(step),
            replace(schedule, total_steps=extended_from * schedule.steps_per_epoch).lr(step),
        )
    log.info(
        "geokit train -> %s%s\n%s\nversions: %s",
        output,
        "" if resume is None else " (resumed)",
        config.to_yaml().rstrip(),
        json.dumps(versions()),
    )
    log.info(
        "%d training pairs, %d references; device %s, ranks %d, amp %s, workers %d%s%s",
        len(train_set),
        len(train_set.reference_paths),
        device,
        world.world_size,
        amp,
        workers,
        f", gradient cache {tc.grad_cache_chunk} pairs/chunk" if tc.grad_cache_chunk else "",
        ", channels_last" if channels_last else "",
    )
    stepper = TrainStep(
        encoder,
        loss_fn,
        optimizer,
        device=device,
        amp=amp,
        scaler=scaler,
        clip_value=tc.clip_value,
        grad_cache_chunk=tc.grad_cache_chunk,
        channels_last=channels_last,
        world=world,
        train=train_set,
    )
    ref_norm = parts.norm_for("reference")
    pairs = PairList(
        parts.dataset,
        train_set,
        parts.norm,
        seed=config.seed,
        bad_images="skip",
        reference_norm=None if ref_norm == parts.norm else ref_norm,
        transforms=parts.transforms,
    )
    # One loader for the whole run, so worker processes persist across epochs; its batch
    # sampler hands out (epoch, index) keys. It has its own generator: creating iterators
    # must not draw from torch's global RNG (exact resume).
    batch_keys = EpochBatches()
    loader: torch.utils.data.DataLoader[Any] = torch.utils.data.DataLoader(
        pairs,  # type: ignore[arg-type]  # a map-style dataset without torch's base class
        batch_sampler=batch_keys,
        num_workers=workers,
        collate_fn=collate_pairs,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(config.seed),
    )
    show = show if world.is_main else False
    return Engine(
        config=config,
        output=output,
        world=world,
        device=device,
        show=show,
        parts=parts,
        feed=SamplerFeed(config, parts, sampler, pairs, world=world, device=device, workers=workers, show=show),
        optimizer=optimizer,
        scaler=scaler,
        stepper=stepper,
        batch_keys=batch_keys,
        loader=loader,
        schedule=schedule,
        tb=TensorBoard(output / "tensorboard" if world.is_main else None),
        start_epoch=start_epoch,
        resume=resume,
        step=step,
        history=history,
    )


def _open_folder(config: Config, output: Path, world: D.World, force: bool) -> int | None:
    """Create the folder, start its log, check a saved config against this one, write this one.
    Returns the saved ``train.epochs`` when only they were raised (the schedule is extended)."""
    output.mkdir(parents=True, exist_ok=True)
    setup_logging(output / "train.log", rank=world.rank)
    if world.is_main:
        clean_temp_files(output)
    extended_from = check_resume_config(output, config.to_dict(), force)
    if world.is_main:
        atomic_write_text(output / "config.yaml", config.to_yaml())
    return extended_from


def _check_batch_size(tc: TrainConfig, train_set: TrainSet, world: D.World, dataset_name: str) -> None:
    if len(train_set) < tc.batch_size:
        raise GeokitError(
            f"dataset '{dataset_name}' has {len(train_set)} training pairs, fewer than train.batch_size={tc.batch_size}"
        )
    if tc.batch_size < world.world_size:
        raise GeokitError(
            f"train.batch_size={tc.batch_size} is smaller than the {world.world_size} "
            "ranks: every rank needs at least one pair per batch"
        )


def _check_space(output: Path, modules: list[Any]) -> None:
    """The state holds the weights and two AdamW moments (3x), model.safetensors the weights
    (1x); while the state is rewritten the old one and its temporary copy coexist: 7x at the
    peak, less what the files of a resumed run already occupy."""
    n_bytes = sum(p.numel() * p.element_size() for m in modules for p in m.parameters())
    have = sum(f.stat().st_size for f in (output / STATE, output / WEIGHTS) if f.exists())
    check_writable(output, max(7 * n_bytes - have, 4 * n_bytes) + (64 << 20))


def _find_state(output: Path, world: D.World, device: Any) -> ResumeState | None:
    """The folder's resume state, if any; under DDP every rank must see it, or none."""
    path = output / STATE
    has_state = path.exists()
    if world.distributed:  # every rank must resume, or none: a node without the folder would start over
        seen, _ = D.exchange_step_info(world, int(has_state), False, device)
        if len(set(seen)) > 1:
            ranks = ", ".join(str(r) for r, x in enumerate(seen) if not x)
            raise GeokitError(
                f"ranks {ranks} do not see {path}, which the others resume from: "
                "--output must be a folder every node shares (a network file system)"
            )
    return ResumeState.load(path) if has_state else None
