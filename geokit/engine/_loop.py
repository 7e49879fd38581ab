"""The training loop: a fully set-up :class:`Engine` (see ``_setup.py``) runs the epochs, and
each epoch its steps, checkpoints, ``metrics.jsonl`` row and (optional) monitoring evaluation."""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geokit import distributed as D
from geokit.config import Config
from geokit.data import BadPair
from geokit.engine._feed import EpochBatches, SamplerFeed
from geokit.engine._resume import ResumeState
from geokit.engine._rundir import STATE, WEIGHTS, append_history, append_step
from geokit.engine._schedule import Schedule, step_seed
from geokit.engine._stats import EpochRow, EpochStats
from geokit.engine._step import NonFiniteLoss, TrainStep
from geokit.engine.evaluation import format_table, run_protocol
from geokit.errors import GeokitError
from geokit.model import Parts
from geokit.runtime import TensorBoard, format_duration, log, progress, show_progress
from geokit.sampling import rank_slice


class TrainingInterrupted(GeokitError):
    """SIGINT/SIGTERM: the step in flight finished, the state was saved, the run stopped."""


@dataclass
class TrainResult:
    output: Path
    epochs_run: int
    history: list[dict[str, Any]]  # metrics.jsonl rows, one per epoch (a resumed run's earlier ones too)
    parts: Parts


def evaluate_after_training(result: TrainResult, split: str | None = None) -> dict[str, float]:
    """Evaluate the trained parts in memory (no reload)."""
    res = run_protocol(result.parts, split)
    log.info(format_table(res.metrics, f"{result.parts.dataset.name} {res.eval_set.name}"))
    return res.metrics


class _StopFlag:
    """SIGINT/SIGTERM set a flag the loop checks between steps; a second signal acts at once."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signal.Signals(signum).name
        log.warning(
            "%s received: finishing the current step, then saving and stopping (send it again to stop at once)",
            self.signal,
        )
        signal.signal(signum, self._old.get(signum, signal.SIG_DFL))

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


@dataclass
class _Progress:
    """The epoch in progress.

    :ivar batches: its global batches (a step-level sampler's: those handed out so far).
    :ivar done: batches trained on (or skipped as unreadable).
    :ivar t0: ``perf_counter`` at its start, less the seconds spent before a resume.
    :ivar lr: the last step's learning rate (before the first step: the coming one's).
    """

    epoch: int
    batches: list[np.ndarray]
    done: int
    stats: EpochStats
    t0: float
    lr: float

    def keep_time(self) -> None:
        self.stats.seconds = time.perf_counter() - self.t0


@dataclass(eq=False)
class Engine:
    """One run, fully set up: everything it uses is here from the start (``_setup.prepare``
    builds it); :meth:`run` trains from ``start_epoch`` (``resume``: the state it continues)."""

    config: Config
    output: Path
    world: D.World
    device: Any
    show: bool | None  # progress bars (False on every rank but 0)
    parts: Parts
    feed: SamplerFeed
    optimizer: Any
    scaler: Any
    stepper: TrainStep
    batch_keys: EpochBatches
    loader: Any  # torch DataLoader over feed.pairs, batch sampler batch_keys
    schedule: Schedule
    tb: TensorBoard
    start_epoch: int
    resume: ResumeState | None
    step: int = 0  # optimisation steps done in the run
    history: list[dict[str, Any]] = field(default_factory=list)
    skipped_total: int = 0  # pairs skipped (unreadable images) in this process's epochs
    stop: _StopFlag = field(default_factory=_StopFlag)

    @property
    def state_path(self) -> Path:
        return self.output / STATE

    def run(self) -> TrainResult:
        tc, world = self.config.train, self.world
        epochs_run = 0
        try:
            with self.stop:
                for epoch in range(self.start_epoch, tc.epochs + 1):
                    r = self.resume
                    self._epoch(epoch, r if r is not None and r.epoch == epoch and not r.epoch_done else None)
                    epochs_run += 1
        finally:
            self.tb.close()
        if self.skipped_total:
            log.warning(
                "skipped %d training pairs with unreadable images in this run (train.bad_images=skip)",
                self.skipped_total,
            )
        if world.is_main:
            self.parts.save(self.output / WEIGHTS, epochs=tc.epochs, steps=self.step)
            log.info("wrote %s", self.output / WEIGHTS)
        D.barrier(world)
        return TrainResult(self.output, epochs_run, self.history, self.parts)

    # ---------------------------------------------------------------- one epoch
    def _epoch(self, epoch: int, resume: ResumeState | None) -> None:
        """One epoch: fresh batches, or those of the interrupted epoch ``resume`` continues."""
        if resume is not None:
            batches, start, stats = resume.batches, resume.batches_done, resume.stats
        else:
            batches, start, stats = self.feed.epoch_batches(epoch), 0, EpochStats()
        self.feed.pairs.epoch = epoch
        self.parts.encoder.train()
        p = _Progress(epoch, batches, start, stats, time.perf_counter() - stats.seconds, self.schedule.lr(self.step))
        for q, r, idx, bad in self._batches(p):
            self._handle_bad(bad, epoch)
            p.stats.skipped += len(bad)
            n_local = 0 if q is None else len(q)
            sizes, stop = D.exchange_step_info(self.world, n_local, self.stop.signal is not None, self.device)
            if stop:
                p.keep_time()
                self._interrupt_in_epoch(p)
            if sum(sizes) >= 2:
                self._step(p, q, r, idx, sizes)
            p.done += 1
            every = self.config.train.checkpoint_every
            if (
                every
                and self.step % every == 0
                and (self.feed.step_level or p.done < len(p.batches))
                and sum(sizes) >= 2
            ):
                p.keep_time()
                self._save_state(p, epoch_done=False)
        self._end_epoch(p)

    def _batches(self, p: _Progress) -> Any:
        """This rank's collated batches from ``p.done`` on: ``(query, reference, indices, bad)``."""
        tc, world = self.config.train, self.world
        if self.feed.step_level:
            p.batches = p.batches[: p.done]
            source, total = self.feed.step_batches(p.epoch, p.done, p.batches, lambda: self.step), None
        else:
            self.batch_keys.set(p.epoch, [rank_slice(b, world.rank, world.world_size) for b in p.batches[p.done :]])
            source, total = self.loader, len(self.batch_keys)
        # a bar on a terminal; elsewhere the step log lines (rate, time left) say it already
        bar = self.show if self.show is not None else show_progress()
        items = iter(progress(source, total=total, desc=f"epoch {p.epoch}/{tc.epochs}", enabled=bar))
        while True:
            try:
                item = next(items)
            except StopIteration:
                return
            except Exception:
                if self.stop.signal is None:
                    raise
                item = None, None, None, []  # Ctrl-C also reached (and ended) the loader's workers
            yield item

    def _step(self, p: _Progress, q: Any, r: Any, idx: Any, sizes: tuple[int, ...]) -> None:
        import torch

        if q is None:  # every pair of this rank's slice was unreadable
            context = self.parts.context
            assert context is not None  # build() makes one
            q = torch.empty((0, 3, *context.query_size))
            r = torch.empty((0, 3, *context.reference_size))
            idx = torch.empty(0, dtype=torch.int64)
        p.lr = self.schedule.lr(self.step)
        torch.manual_seed(step_seed(self.config.seed, self.step))
        try:
            loss = self.stepper.step(q, r, p.lr, sizes, idx)
        except NonFiniteLoss as exc:
            raise GeokitError(
                f"the loss became {exc.value} at epoch {p.epoch}, step {self.step + 1}: training "
                f"stopped. The last good state is "
                f"{self.state_path if self.state_path.exists() else 'none yet (no checkpoint was written)'}"
                "; try a lower train.lr, train.amp=false, or check the data"
            ) from None
        self.step += 1
        p.stats.add_step(loss, sum(sizes))
        if self.step % self.config.train.log_every == 0:
            self._log_step(p, loss)

    def _log_step(self, p: _Progress, loss: float) -> None:
        # rate over this epoch so far; what is left: this run's remaining steps at that rate
        # (evaluation and mining between epochs not included)
        spent = max(time.perf_counter() - p.t0, 1e-9)
        left = (self.schedule.total_steps - self.step) * spent / max(p.stats.steps, 1)
        log.info(
            "epoch %d/%d step %d/%d loss %.4f lr %.2e  %.1f pairs/s, training %s left",
            p.epoch,
            self.config.train.epochs,
            self.step,
            self.schedule.total_steps,
            loss,
            p.lr,
            p.stats.images / 2 / spent,
            format_duration(left),
        )
        if self.world.is_main:
            append_step(self.output, {"epoch": p.epoch, "step": self.step, "loss": loss, "lr": p.lr})
            self.tb.scalars({"train/loss": loss, "train/lr": p.lr}, self.step)

    def _end_epoch(self, p: _Progress) -> None:
        """The epoch's row (metrics.jsonl, history, TensorBoard), evaluation, the epoch-end state."""
        tc, world, epoch, stats = self.config.train, self.world, p.epoch, p.stats
        seconds = time.perf_counter() - p.t0
        if world.distributed:  # bad-image counts of all ranks
            counts, _ = D.exchange_step_info(world, stats.skipped, False, self.device)
            skipped = sum(counts)
        else:
            skipped = stats.skipped
        row = EpochRow(
            epoch=epoch,
            step=self.step,
            loss=stats.loss_sum / max(stats.steps, 1),
            lr=p.lr,
            batches=stats.steps,
            seconds=round(seconds, 3),
            images_per_s=round(stats.images / max(seconds, 1e-9), 2),
            skipped_pairs=skipped if tc.bad_images == "skip" else None,
            loss_params={
                k: float(v.detach().float().mean()) for k, v in self.parts.loss.named_parameters() if v.numel() == 1
            },
        )
        if tc.bad_images == "skip":
            self.skipped_total += skipped
        log.info(
            "epoch %d/%d: loss %.4f, %d batches, %.1f s (%.1f images/s)%s",
            epoch,
            tc.epochs,
            row.loss,
            stats.steps,
            seconds,
            row.images_per_s,
            f", {skipped} pairs skipped (unreadable images)" if skipped else "",
        )
        if tc.eval_every and (epoch % tc.eval_every == 0 or epoch == tc.epochs):
            if world.is_main:
                row.evaluation = self._evaluate(epoch)
            D.barrier(world)  # the other ranks wait for rank 0's evaluation
        values = row.as_row()
        self.history.append(values)
        if world.is_main:
            append_history(self.output, values)
            self.tb.scalars({f"epoch/{k}": v for k, v in values.items() if k not in ("epoch", "step")}, epoch)
        p.done = len(p.batches)
        self._save_state(p, epoch_done=True)
        # A signal that arrived during the epoch's last step is seen here; under DDP it may have
        # reached one rank only (or the ranks at different moments): agree, or one rank would
        # stop while the others start the next epoch and wait for it for ever.
        _, stop = D.exchange_step_info(world, 0, self.stop.signal is not None, self.device)
        if stop and epoch < tc.epochs:  # the epoch-end state is already written
            self._stop_run(f"the end of epoch {epoch} (step {self.step})")

    def _evaluate(self, epoch: int) -> dict[str, Any]:
        """Monitoring only: the final weights are always the last epoch's (no selection)."""
        ds, cfg = self.parts.dataset, self.config
        split = cfg.eval.split or ("val" if "val" in ds.splits else None)
        res = run_protocol(self.parts, split, device=self.device, show=self.show)
        log.info(
            format_table(
                res.metrics, f"epoch {epoch}: {ds.name} / {res.eval_set.name} (monitoring only, no model selection)"
            )
        )
        return dict(res.metrics)

    def _handle_bad(self, bad: list[BadPair], epoch: int) -> None:
        if not bad:
            return
        if self.config.train.bad_images != "skip":
            raise GeokitError(
                f"{bad[0].message} (training pair {bad[0].index}, epoch {epoch}). Fix or "
                "remove the file, or set train.bad_images=skip to skip such pairs and count them"
            )
        for b in bad:
            log.warning("skipping training pair %d: %s", b.index, b.message)

    # ---------------------------------------------------------------- state and stopping
    def _save_state(self, p: _Progress, *, epoch_done: bool, sampler_state: dict[str, Any] | None = None) -> None:
        """Rank 0 writes the whole resume state atomically (see :meth:`ResumeState.save`)."""
        import random

        import torch

        if not self.world.is_main:
            return
        ResumeState(
            epoch=p.epoch,
            epoch_done=epoch_done,
            batches_done=p.done,
            step=self.step,
            batches=p.batches,
            stats=p.stats,
            encoder=self.parts.encoder.state_dict(),
            loss=self.parts.loss.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scaler=self.scaler.state_dict(),
            sampler=self.feed.sampler.state_dict() if sampler_state is None else sampler_state,
            torch_rng=torch.get_rng_state(),
            numpy_rng=list(np.random.get_state()),
            python_rng=random.getstate(),
        ).save(self.state_path)

    def _interrupt_in_epoch(self, p: _Progress) -> None:
        # A step-level sampler already handed out the batch this step would have trained on:
        # save its state from before that call, so the resumed run asks again.
        before = self.feed.before if self.feed.step_level and len(p.batches) > p.done else None
        where = f"epoch {p.epoch}, after batch {p.done} of {len(p.batches)} (step {self.step})"
        if before is not None:
            p.batches = p.batches[: p.done]
        self._save_state(p, epoch_done=False, sampler_state=before)
        self._stop_run(where)

    def _stop_run(self, where: str) -> None:
        D.barrier(self.world)
        by = self.stop.signal or "a signal to another rank"
        raise TrainingInterrupted(
            f"training stopped by {by} at {where}; the state is saved in "
            f"{self.state_path}. Re-run the same command to resume."
        )
