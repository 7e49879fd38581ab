"""The training engine: AdamW, per-step cosine schedule with linear warm-up, value clipping,
mixed precision, data-parallel over ranks, gradient caching, exact resume.

A run folder holds ``config.yaml`` (resolved), ``train.log`` (config and versions at the top),
``metrics.jsonl`` (one line per epoch), ``steps.jsonl`` (loss and lr every ``train.log_every``
steps), ``state.safetensors`` (resume state, rewritten atomically at every epoch end and every
``train.checkpoint_every`` steps) and, at the end, ``model.safetensors`` (the shareable weights +
record). Running the same command on the same folder resumes from the last checkpoint; on a CPU
with a fixed seed the resumed run ends with bit-identical weights.

Distributed (``torchrun --nproc_per_node=N -m geokit train ...``): every rank trains on its
slice of each global batch (``rank_slice``), the embeddings are all-gathered with gradients so
the loss sees the whole global batch, and gradients are scaled so that DDP's average equals the
single-process gradient. Rank 0 logs, checkpoints and evaluates; the others wait.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import random
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from geokit import distributed as D
from geokit._calls import accepts
from geokit.checkpoint import atomic_write_text, load_state, save_state
from geokit.config import Config, read_yaml
from geokit.data import BadPair, PairList, TrainSet
from geokit.errors import GeokitError
from geokit.evaluation import format_table, run_protocol
from geokit.model import Parts, build, build_component, encode
from geokit.registry import origin, short_repr
from geokit.runtime import (
    TensorBoard,
    amp_setting,
    autocast,
    configure_threads,
    default_channels_last,
    default_embed_amp,
    default_workers,
    keep_freed_memory,
    log,
    progress,
    setup_logging,
    show_progress,
    versions,
)
from geokit.sampling import CheckedSampler, EpochContext, StepContext, TrainEmbeddings, is_step_level, rank_slice

STATE = "state.safetensors"
WEIGHTS = "model.safetensors"
STATE_FORMAT = 2
# Keys that may differ between a run and its resumption (they do not change the result, or
# are there to rescue a run: skipping bad images, gradient caching after running out of memory).
RESUME_FREE = {
    ("train", "workers"),
    ("train", "device"),
    ("train", "threads"),
    ("train", "log_every"),
    ("train", "checkpoint_every"),
    ("train", "grad_cache_chunk"),
    ("train", "bad_images"),
    ("train", "dist_timeout"),
    ("train", "eval_every"),
    ("train", "channels_last"),
    ("eval", "batch_size"),
    ("eval", "chunk_size"),
    ("eval", "split"),
}


class TrainingInterrupted(GeokitError):
    """SIGINT/SIGTERM: the step in flight finished, the state was saved, the run stopped."""


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up from 0, then a half cosine to 0 at ``total`` steps."""
    if step < warmup:
        return base * (step + 1) / warmup
    span = max(total - warmup, 1)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))


def step_seed(seed: int, step: int) -> int:
    """torch's RNG is re-seeded from (seed, step) before every step, so stochastic layers
    (drop-path) give the same result whether or not the run was interrupted."""
    return int(np.random.SeedSequence([seed % 2**32, step]).generate_state(1)[0])


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


# ------------------------------------------------------------------------------ one step


def _pair_encoder_class() -> Any:
    import torch

    class PairEncoder(torch.nn.Module):
        """Both views through the shared encoder in one forward call, so DDP sees one forward
        per backward (two separate calls of a DDP module before one backward are an error)."""

        def __init__(self, encoder: torch.nn.Module) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, query: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return encode(self.encoder, query, "query"), encode(self.encoder, reference, "reference")

    return PairEncoder


def collate_pairs(items: list[Any]) -> tuple[Any, Any, Any, list[BadPair]]:
    """Stack the readable pairs (query images, reference images, pair indices); hand the
    unreadable ones (``BadPair``) back separately."""
    import torch

    good = [x for x in items if not isinstance(x, BadPair)]
    bad = [x for x in items if isinstance(x, BadPair)]
    if not good:
        return None, None, None, bad
    return (
        torch.stack([x[0] for x in good]),
        torch.stack([x[1] for x in good]),
        torch.tensor([x[2] for x in good], dtype=torch.int64),
        bad,
    )


_PAIR_DATA = ("indices", "references", "conflicts", "columns")


def loss_inputs(loss_fn: Any, train: TrainSet | None, indices: Any) -> dict[str, Any]:
    """The per-pair keyword arguments ``loss_fn.forward`` declares (see
    ``geokit_register_losses``), for the global batch's pair ``indices`` (a CPU int64 tensor)."""
    import torch

    wanted = [k for k in _PAIR_DATA if accepts(loss_fn, k)]
    if not wanted:
        return {}
    if train is None or indices is None:
        raise GeokitError(
            f"the loss takes per-pair data ({', '.join(wanted)}) but this step has no training set or pair indices"
        )
    idx = indices.numpy()
    out: dict[str, Any] = {}
    if "indices" in wanted:
        out["indices"] = indices
    if "references" in wanted:
        out["references"] = torch.from_numpy(train.pair_reference[idx])
    if "conflicts" in wanted:
        c = train.pair_conflicts
        out["conflicts"] = None if c is None else torch.from_numpy(c[idx])
    if "columns" in wanted:
        out["columns"] = {k: torch.from_numpy(np.ascontiguousarray(v[idx])) for k, v in train.columns.items()}
    return out


def _to(x: Any, device: Any) -> Any:
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    return x.to(device) if x is not None else None


class _EpochBatches:
    """Batch sampler of the run's DataLoader: this rank's batches of the current epoch, as
    ``(epoch, index)`` keys for :class:`PairList`."""

    def __init__(self) -> None:
        self.epoch = 1
        self.batches: list[np.ndarray] = []

    def set(self, epoch: int, batches: list[np.ndarray]) -> None:
        self.epoch, self.batches = epoch, batches

    def __iter__(self) -> Any:
        for b in self.batches:
            yield [(self.epoch, int(i)) for i in b]

    def __len__(self) -> int:
        return len(self.batches)


class TrainStep:
    """Forward, global loss, backward, clipping and optimizer step for one (local) batch.

    :param grad_cache_chunk: pairs per chunk for gradient caching, or None for one forward.
        With caching the batch is embedded chunk by chunk without a graph, the loss and its
        gradient with respect to the embeddings are computed on the (gathered) global batch, and
        each chunk is re-run with a graph and back-propagated with its cached gradient: the same
        gradients as the plain step, with the activation memory of one chunk. Both passes over a
        chunk use the same RNG state, so stochastic depth draws the same masks in both (though
        not the masks a one-pass forward of the whole batch would draw).
    """

    def __init__(
        self,
        encoder: Any,
        loss_fn: Any,
        optimizer: Any,
        *,
        device: Any,
        amp: bool | str = False,
        scaler: Any = None,
        clip_value: float | None = None,
        grad_cache_chunk: int | None = None,
        channels_last: bool = False,
        world: D.World = D.SINGLE,
        train: TrainSet | None = None,
    ) -> None:
        import torch

        self.encoder, self.loss_fn, self.optimizer, self.train = encoder, loss_fn, optimizer, train
        self.device, self.amp, self.world = device, amp, world
        self.scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
        self.clip_value, self.chunk, self.channels_last = clip_value, grad_cache_chunk, channels_last
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.raw_pair = _pair_encoder_class()(encoder)
        self.pair, self.loss_mod = self.raw_pair, loss_fn
        if world.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # Depthwise-conv weights (C, 1, k, k) get gradients whose stride on the size-1 axis
            # differs from the bucket's: the same memory layout, but DDP warns on every run.
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            ids = [device.index] if device.type == "cuda" else None
            self.pair = DDP(self.raw_pair, device_ids=ids)
            if any(p.requires_grad for p in loss_fn.parameters()):  # DDP refuses a module without
                self.loss_mod = DDP(loss_fn, device_ids=ids)  # trainable parameters

    def _inputs(self, x: Any) -> Any:
        import torch

        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _pair_data(self, indices: Any, sizes: tuple[int, ...]) -> dict[str, Any]:
        """Per-pair loss inputs of the global batch: this rank's pair indices, gathered."""
        if indices is None or self.train is None or not any(accepts(self.loss_fn, k) for k in _PAIR_DATA):
            return {}  # used without a training set (the API, benchmarks): the loss's defaults
        glob = D.all_gather_rows(indices.to(self.device), sizes).cpu()
        return _to(loss_inputs(self.loss_fn, self.train, glob), self.device)

    def backward(self, query: Any, reference: Any, sizes: tuple[int, ...] | None = None, indices: Any = None) -> Any:
        """Gradients of the global loss into ``.grad`` (scaled by the AMP scaler); returns the
        detached loss. ``sizes``: the pairs every rank holds this step (default: this batch);
        ``indices``: this rank's pair indices (for losses that take per-pair data)."""
        q, r = self._inputs(query), self._inputs(reference)
        sizes = sizes or (len(q),)
        extra = self._pair_data(indices, sizes)
        self.optimizer.zero_grad(set_to_none=True)
        if self.chunk:
            return self._backward_cached(q, r, sizes, extra)
        with autocast(self.device, self.amp):
            qe, re_ = self.pair(q, r)
        rank = self.world.rank
        qa = D.all_gather_with_grad(qe.float(), sizes, rank)
        ra = D.all_gather_with_grad(re_.float(), sizes, rank)
        loss = self.loss_mod(qa, ra, **extra)
        self._check(loss)
        self.scaler.scale(loss).backward()
        return loss.detach()

    def _backward_cached(self, q: Any, r: Any, sizes: tuple[int, ...], extra: dict[str, Any]) -> Any:
        import torch

        n, chunk = len(q), cast(int, self.chunk)  # set: backward() comes here only then
        spans = [(a, min(a + chunk, n)) for a in range(0, n, chunk)] or [(0, 0)]
        rng = []
        with torch.no_grad(), autocast(self.device, self.amp):
            qs, rs = [], []
            for a, b in spans:
                rng.append(self._rng_state())
                qe, re_ = self.raw_pair(q[a:b], r[a:b])
                qs.append(qe.float())
                rs.append(re_.float())
        qa = D.all_gather_rows(torch.cat(qs), sizes).requires_grad_(True)
        ra = D.all_gather_rows(torch.cat(rs), sizes).requires_grad_(True)
        loss = self.loss_mod(qa, ra, **extra)
        self._check(loss)
        self.scaler.scale(loss).backward()
        # This rank's rows of the embedding gradient; × world size as in all_gather_with_grad,
        # so that DDP's average over ranks is the single-process sum.
        start, ws = sum(sizes[: self.world.rank]), self.world.world_size
        gq = qa.grad[start : start + n] * ws if ws > 1 else qa.grad
        gr = ra.grad[start : start + n] * ws if ws > 1 else ra.grad
        for k, (a, b) in enumerate(spans):
            self._set_rng_state(rng[k])  # the same drop-path masks as in the first pass
            last = k == len(spans) - 1
            sync = contextlib.nullcontext() if last or not self.world.distributed else self.pair.no_sync()
            with sync:
                with autocast(self.device, self.amp):
                    qe, re_ = self.pair(q[a:b], r[a:b])
                torch.autograd.backward([qe.float(), re_.float()], [gq[a:b], gr[a:b]])
        return loss.detach()

    def _rng_state(self) -> Any:
        import torch

        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return torch.get_rng_state(), cuda

    def _set_rng_state(self, state: Any) -> None:
        import torch

        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], self.device)

    def _check(self, loss: Any) -> None:
        import torch

        if not torch.isfinite(loss):
            raise NonFiniteLoss(float(loss.detach()))

    def step(
        self, query: Any, reference: Any, lr: float, sizes: tuple[int, ...] | None = None, indices: Any = None
    ) -> float:
        """One optimisation step at learning rate ``lr``; returns the loss."""
        import torch

        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss = self.backward(query, reference, sizes, indices)
        if self.clip_value is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_value_(self.params, self.clip_value)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss)


class NonFiniteLoss(Exception):
    def __init__(self, value: float) -> None:
        super().__init__(f"loss {value}")
        self.value = value


# ------------------------------------------------------------------------------ signals


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


# ------------------------------------------------------------------------------ the engine


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
        lock = _lock_output(Path(output)) if world.is_main else None
        result = _Engine(config, Path(output), world, device, show, force).run()
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


LOCK = ".geokit-train.lock"


def _lock_output(output: Path) -> Any:
    """Create ``output`` and take its run lock (``flock``: the kernel releases it when the
    process ends, so a crashed run never blocks the next); checks the folder is writable."""
    import fcntl

    try:
        output.mkdir(parents=True, exist_ok=True)
        fh = open(output / LOCK, "a+")  # noqa: SIM115 - held for the whole run
    except OSError as exc:
        raise GeokitError(
            f"cannot write to the output folder {output}: {exc.strerror or exc}. Choose a writable --output."
        ) from None
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        pid = fh.read().strip()[:20]
        fh.close()
        raise GeokitError(
            f"{output} is in use by another 'geokit train'{f' (process {pid})' if pid else ''}: "
            "one run per output folder. Wait for it to finish, stop it (it saves its "
            "state), or use another --output."
        ) from None
    except OSError as exc:  # a file system without locks (some network mounts): run unlocked
        log.warning("cannot lock %s (%s): nothing stops a second run on this folder", output, exc.strerror or exc)
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def _clean_temp_files(output: Path) -> None:
    """Temporary files of writes killed half-way (atomic_write names them ``.NAME.XXXX.tmp``);
    safe to delete: we hold the folder's lock, and the files they were replacing are intact."""
    stale = [p for p in output.glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    if stale:
        log.info(
            "removed %d temporary file(s) left by an interrupted write: %s",
            len(stale),
            ", ".join(p.name for p in stale[:5]),
        )


def _check_writable(output: Path, need_bytes: int) -> None:
    """Fail before the work when the folder is read-only or obviously too full for checkpoints."""
    import shutil

    probe = output / f".geokit-write-test.{os.getpid()}.tmp"
    try:
        with open(probe, "wb") as fh:
            fh.write(b"0" * 4096)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise GeokitError(
            f"cannot write to the output folder {output}: {exc.strerror or exc}. "
            "Free some space or choose another --output."
        ) from None
    finally:
        probe.unlink(missing_ok=True)
    free = shutil.disk_usage(output).free
    if free < need_bytes:
        raise GeokitError(
            f"the output folder {output} has {free / 2**20:,.0f} MiB free, but the "
            f"checkpoints of this model need about {need_bytes / 2**20:,.0f} MiB "
            "(weights, optimizer state and a temporary copy while each is written). "
            "Free some space or choose another --output."
        )


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``["train.lr: 0.001 -> 0.0005", ...]`` for the keys that matter for resuming."""
    a, b = _flat(_comparable(old)), _flat(_comparable(new))
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            out.append(f"{key}: {short_repr(a.get(key, '<unset>'))} -> {short_repr(b.get(key, '<unset>'))}")
    return out


def max_full_batches(pair_reference: np.ndarray, batch_size: int) -> int:
    """The most full batches an epoch can have when no reference may appear twice in a batch:
    the largest B with sum_r min(count_r, B) >= B * batch_size (a pair set with few references
    cannot fill many batches, whatever the sampler)."""
    counts = np.sort(np.bincount(np.asarray(pair_reference, dtype=np.int64)))
    counts = counts[counts > 0]
    lo, hi = 0, int(counts.sum()) // batch_size
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if int(np.minimum(counts, mid).sum()) >= mid * batch_size:
            lo = mid
        else:
            hi = mid - 1
    return lo


class _Engine:
    def __init__(
        self, config: Config, output: Path, world: D.World, device: Any, show: bool | None, force: bool = False
    ) -> None:
        self.config, self.output, self.world, self.device = config, output, world, device
        self.show = show if world.is_main else False
        self.state_path = output / STATE
        self.force = force

    # ---------------------------------------------------------------- set-up
    def run(self) -> TrainResult:
        import torch

        config, output, world, device = self.config, self.output, self.world, self.device
        tc = config.train
        output.mkdir(parents=True, exist_ok=True)
        setup_logging(output / "train.log", rank=world.rank)
        if world.is_main:
            _clean_temp_files(output)
        self.extended_from = self._check_resume_config(config.to_dict())
        if world.is_main:
            atomic_write_text(output / "config.yaml", config.to_yaml())

        configure_threads(tc.threads)
        # Before the model exists, so that its buffers and every step's come from the tuned heap.
        self.malloc_tuned = keep_freed_memory() if device.type == "cpu" else False
        self.amp = amp_setting(device, tc.amp, tc.amp_dtype)  # False, or the autocast dtype name
        self.workers = default_workers(device) if tc.workers is None else tc.workers
        channels_last = default_channels_last(device) if tc.channels_last is None else tc.channels_last
        torch.manual_seed(config.seed)  # the same initial weights on every rank and every run
        random.seed(config.seed)
        np.random.seed(config.seed % 2**32)

        parts = self.parts = build(config)
        context = parts.context
        assert context is not None  # build() makes one
        ds = parts.dataset
        train_set = self.train_set = context.train_set  # listed once, shared with factories
        if len(train_set) < tc.batch_size:
            raise GeokitError(
                f"dataset '{ds.name}' has {len(train_set)} training pairs, fewer than train.batch_size={tc.batch_size}"
            )
        if tc.batch_size < world.world_size:
            raise GeokitError(
                f"train.batch_size={tc.batch_size} is smaller than the {world.world_size} "
                "ranks: every rank needs at least one pair per batch"
            )
        name = config.names["sampler"]
        self.sampler = CheckedSampler(
            build_component("sampler", name, config.sampler, context.for_kind("sampler")),
            f"sampler '{name}' {origin('sampler', name)}",
        )
        self.step_level = is_step_level(self.sampler)
        encoder, loss_fn = parts.encoder.to(device), parts.loss.to(device)
        if channels_last:
            encoder.to(memory_format=torch.channels_last)
        params = [p for m in (encoder, loss_fn) for p in m.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
        if world.is_main:
            # The state holds the weights and two AdamW moments (3x), model.safetensors the weights
            # (1x); while the state is rewritten the old one and its temporary copy coexist: 7x at
            # the peak, less what the files of a resumed run already occupy.
            n_bytes = sum(p.numel() * p.element_size() for m in (encoder, loss_fn) for p in m.parameters())
            have = sum(f.stat().st_size for f in (self.state_path, output / WEIGHTS) if f.exists())
            _check_writable(output, max(7 * n_bytes - have, 4 * n_bytes) + (64 << 20))
        # fp16 needs a loss scaler; initial scale 2^10 as the released code (its CPU version works too)
        self.scaler = torch.amp.GradScaler(device.type, init_scale=2.0**10, enabled=self.amp == "float16")

        self.steps_per_epoch = max(len(train_set) // tc.batch_size, 1)
        fillable = max_full_batches(train_set.pair_reference, tc.batch_size)
        if fillable < self.steps_per_epoch:
            # Suspicious data: many pairs share few references, and one batch may hold a
            # reference only once. Say so, and plan the schedule for the steps that can run.
            log.warning(
                "only %d batches of %d pairs with distinct references can be formed from %d training "
                "pairs with %d references (at most %d pairs per epoch; the rest are left out of every "
                "epoch): many pairs share a reference. The lr schedule and warm-up are planned for "
                "%d steps per epoch. Lower train.batch_size or check the dataset.",
                fillable,
                tc.batch_size,
                len(train_set),
                len(train_set.reference_paths),
                fillable * tc.batch_size,
                max(fillable, 1),
            )
            if fillable == 0:
                raise GeokitError(
                    f"dataset '{ds.name}': no batch of train.batch_size={tc.batch_size} pairs with "
                    f"distinct references can be formed ({len(train_set.reference_paths)} references "
                    f"for {len(train_set)} pairs); lower train.batch_size"
                )
            self.steps_per_epoch = fillable
        self.total_steps = tc.epochs * self.steps_per_epoch
        self.warmup_steps = int(round(tc.warmup_epochs * self.steps_per_epoch))
        self.step = 0
        self.history: list[dict[str, Any]] = []
        start_epoch, resume = 1, None
        has_state = self.state_path.exists()
        if world.distributed:  # every rank must resume, or none: a node without the folder would start over
            seen, _ = D.exchange_step_info(world, int(has_state), False, device)
            if len(set(seen)) > 1:
                ranks = ", ".join(str(r) for r, x in enumerate(seen) if not x)
                raise GeokitError(
                    f"ranks {ranks} do not see {self.state_path}, which the others resume from: "
                    "--output must be a folder every node shares (a network file system)"
                )
        if has_state:
            resume = self._load_state()
            start_epoch = int(resume["epoch"]) + (1 if resume["epoch_done"] else 0)
        if start_epoch > tc.epochs and (output / WEIGHTS).exists():
            log.info("%s already finished %d epochs; nothing to do", output, tc.epochs)
            return TrainResult(output, 0, self.history, parts)

        if resume is not None and self.extended_from is not None:
            old_total = self.extended_from * self.steps_per_epoch
            log.info(
                "train.epochs raised from %d to %d: the cosine schedule is recomputed for %d steps "
                "(warm-up unchanged); at step %d the lr continues at %.3g instead of %.3g on the old "
                "schedule",
                self.extended_from,
                tc.epochs,
                self.total_steps,
                self.step,
                lr_at(self.step, self.total_steps, self.warmup_steps, tc.lr),
                lr_at(self.step, old_total, self.warmup_steps, tc.lr),
            )
        if resume is None:
            log.info("geokit train -> %s\n%s\nversions: %s", output, config.to_yaml().rstrip(), json.dumps(versions()))
        else:
            log.info(
                "geokit train -> %s (resumed)\n%s\nversions: %s",
                output,
                config.to_yaml().rstrip(),
                json.dumps(versions()),
            )
        log.info(
            "%d training pairs, %d references; device %s, ranks %d, amp %s, workers %d%s%s",
            len(train_set),
            len(train_set.reference_paths),
            device,
            world.world_size,
            self.amp,
            self.workers,
            f", gradient cache {tc.grad_cache_chunk} pairs/chunk" if tc.grad_cache_chunk else "",
            ", channels_last" if channels_last else "",
        )
        self.stepper = TrainStep(
            encoder,
            loss_fn,
            self.optimizer,
            device=device,
            amp=self.amp,
            scaler=self.scaler,
            clip_value=tc.clip_value,
            grad_cache_chunk=tc.grad_cache_chunk,
            channels_last=channels_last,
            world=world,
            train=train_set,
        )
        ref_norm = parts.norm_for("reference")
        self.pairs = PairList(
            ds,
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
        self.batch_keys = _EpochBatches()
        self.loader: torch.utils.data.DataLoader[Any] = torch.utils.data.DataLoader(
            self.pairs,  # type: ignore[arg-type]  # a map-style dataset without torch's base class
            batch_sampler=self.batch_keys,
            num_workers=self.workers,
            collate_fn=collate_pairs,
            pin_memory=device.type == "cuda",
            persistent_workers=self.workers > 0,
            generator=torch.Generator().manual_seed(config.seed),
        )
        self.tb = TensorBoard(output / "tensorboard" if world.is_main else None)
        self.skipped_total = 0
        epochs_run = 0
        try:
            with _StopFlag() as self.stop:
                for epoch in range(start_epoch, tc.epochs + 1):
                    self._epoch(epoch, resume if resume and int(resume["epoch"]) == epoch else None)
                    resume = None
                    epochs_run += 1
        finally:
            self.tb.close()
        if self.skipped_total:
            log.warning(
                "skipped %d training pairs with unreadable images in this run (train.bad_images=skip)",
                self.skipped_total,
            )
        if world.is_main:
            parts.save(output / WEIGHTS, epochs=tc.epochs, steps=self.step)
            log.info("wrote %s", output / WEIGHTS)
        D.barrier(world)
        return TrainResult(output, epochs_run, self.history, parts)

    # ---------------------------------------------------------------- resume state
    def _check_resume_config(self, new: dict[str, Any]) -> int | None:
        """Refuse to resume with another config (naming the keys) unless forced; only raising
        ``train.epochs`` is allowed. Returns the saved epochs when they were raised."""
        output, saved = self.output, self.output / "config.yaml"
        has_run = self.state_path.exists() or (output / WEIGHTS).exists()
        if not has_run:
            return None
        if not saved.exists():
            if self.force:
                log.warning("%s holds a run without its config.yaml; resuming with this config (--force)", output)
                return None
            raise GeokitError(
                f"{output} holds a run ({STATE if self.state_path.exists() else WEIGHTS}) but "
                "no config.yaml, so it cannot be checked that this config is the same. "
                "Use another --output, delete the folder to start over, or pass --force "
                "to resume with this config anyway."
            )
        try:
            old = read_yaml(saved)
        except GeokitError as exc:
            if not self.force:
                raise GeokitError(
                    f"{exc}. The run's saved config is unreadable; pass --force to resume with this config anyway."
                ) from None
            log.warning("%s; resuming with this config (--force)", exc)
            return None
        diffs = config_differences(old, new)
        if not diffs:
            return None
        old_epochs = old.get("train", {}).get("epochs") if isinstance(old.get("train"), dict) else None
        new_epochs = new["train"]["epochs"]
        if (
            diffs == [d for d in diffs if d.startswith("train.epochs:")]
            and isinstance(old_epochs, int)
            and new_epochs > old_epochs
        ):
            return old_epochs
        shown = "; ".join(diffs[:12]) + (f"; and {len(diffs) - 12} more" if len(diffs) > 12 else "")
        if self.force:
            log.warning("resuming %s with a different config (--force): %s", output, shown)
            return None
        raise GeokitError(
            f"{output} holds a run with a different config ({saved}): {shown}. "
            "Resuming would mix two runs. Use another --output, delete the folder to start "
            "over, or pass --force to resume with the new values (raising only train.epochs "
            "needs no --force: the schedule is extended)."
        )

    def _load_state(self) -> dict[str, Any]:
        import torch

        state = load_state(self.state_path)
        if state.get("format") != STATE_FORMAT:
            raise GeokitError(
                f"{self.state_path} was written by another geokit version (format "
                f"{state.get('format')}, expected {STATE_FORMAT}); delete it to start over"
            )
        try:  # a state from another model (e.g. resumed with --force after changing it) or damaged
            self.parts.encoder.load_state_dict(state["encoder"])
            self.parts.loss.load_state_dict(state["loss"])
            self.optimizer.load_state_dict(state["optimizer"])
            if state["scaler"] and self.scaler.is_enabled():  # empty when saved by a run without fp16
                self.scaler.load_state_dict(state["scaler"])
            self.sampler.load_state_dict(state["sampler"])
            torch.set_rng_state(state["torch_rng"])
            np.random.set_state(tuple(state["numpy_rng"]))
            random.setstate(state["python_rng"])
            self.step = int(state["step"])
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise GeokitError(
                f"the resume state {self.state_path} does not fit this run's model, optimizer "
                f"or sampler ({type(exc).__name__}: {text}). Use another --output, or delete "
                "the state to start over."
            ) from None
        done = int(state["epoch"]) if state["epoch_done"] else int(state["epoch"]) - 1
        self.history = [r for r in _read_history(self.output) if int(r.get("epoch", 0)) <= done]
        where = (
            f"after epoch {state['epoch']}"
            if state["epoch_done"]
            else f"in epoch {state['epoch']} after batch {state['batches_done']}"
        )
        log.info("resuming %s %s (step %d)", self.output, where, self.step)
        return state

    def _save_state(
        self,
        epoch: int,
        batches: list[np.ndarray],
        done: int,
        epoch_done: bool,
        stats: dict[str, float],
        sampler_state: dict[str, Any] | None = None,
    ) -> None:
        """Rank 0 writes the whole resume state atomically (temp file, fsync, rename)."""
        import torch

        if not self.world.is_main:
            return
        sizes = np.asarray([len(b) for b in batches], dtype=np.int64)
        flat = np.concatenate(batches).astype(np.int64) if batches else np.zeros(0, np.int64)
        state = {
            "format": STATE_FORMAT,
            "epoch": epoch,
            "epoch_done": epoch_done,
            "batches_done": done,
            "step": self.step,
            "epoch_batches": flat,
            "epoch_batch_sizes": sizes,
            "epoch_stats": stats,
            "encoder": self.parts.encoder.state_dict(),
            "loss": self.parts.loss.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sampler": self.sampler.state_dict() if sampler_state is None else sampler_state,
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": list(np.random.get_state()),
            "python_rng": random.getstate(),
        }
        try:
            save_state(self.state_path, state)
        except OSError as exc:  # e.g. a full disk: atomic_write left the previous file untouched
            before = "the previous checkpoint is intact" if self.state_path.exists() else "no checkpoint exists yet"
            raise GeokitError(
                f"could not write the checkpoint {self.state_path} "
                f"({exc.strerror or exc}); {before}. Free some space and re-run the same "
                "command to resume."
            ) from None

    # ---------------------------------------------------------------- one epoch
    def _embed_train(self) -> TrainEmbeddings:
        """The training set in evaluation mode, for similarity mining: every rank embeds its
        share of the images and the rows are all-gathered, so all ranks mine the same batches."""
        ds, tr, world = self.parts.dataset, self.train_set, self.world
        amp = self.config.train.amp if self.config.train.amp is not None else default_embed_amp(self.device)
        kw = dict(
            batch_size=self.config.eval.batch_size, device=self.device, amp=amp, workers=self.workers, show=self.show
        )

        def part(paths: Any, size: Any, view: str, desc: str) -> np.ndarray:
            return D.embed_sharded(
                world,
                self.parts.encoder,
                ds,
                paths,
                size,
                self.parts.norm_for(view),
                desc=desc,
                view=view,
                transforms=self.parts.transforms,
                seed=self.config.seed,
                **kw,
            )

        return TrainEmbeddings(
            part(tr.query_paths, ds.query_size, "query", "mine queries"),
            part(tr.reference_paths, ds.reference_size, "reference", "mine references"),
        )

    def _embed_pairs(self, indices: Any) -> TrainEmbeddings:
        """Step-level mining: pairs ``indices`` (and their references, row for row) in
        evaluation mode; each rank embeds its share, every rank gets all rows."""
        tr = self.train_set
        idx = np.asarray(indices, dtype=np.int64)
        q_paths = [tr.query_paths[i] for i in idx]
        r_paths = [tr.reference_paths[j] for j in tr.pair_reference[idx]]
        return TrainEmbeddings(self._embed_subset(q_paths, "query"), self._embed_subset(r_paths, "reference"))

    def _embed_subset(self, paths: list[str], view: str) -> np.ndarray:
        ds, world = self.parts.dataset, self.world
        amp = self.config.train.amp if self.config.train.amp is not None else default_embed_amp(self.device)
        return D.embed_sharded(
            world,
            self.parts.encoder,
            ds,
            paths,
            ds.query_size if view == "query" else ds.reference_size,
            self.parts.norm_for(view),
            batch_size=self.config.eval.batch_size,
            device=self.device,
            amp=amp,
            workers=0,
            show=False,
            view=view,
            transforms=self.parts.transforms,
            seed=self.config.seed,
        )

    def _context(self, epoch: int, cls: type[EpochContext], **extra: Any) -> Any:
        """What a sampler receives for ``epoch`` (``StepContext`` adds the step's fields)."""
        tc, world = self.config.train, self.world
        return cls(
            epoch=epoch,
            epochs=tc.epochs,
            batch_size=tc.batch_size,
            seed=self.config.seed,
            train=self.train_set,
            dataset_name=self.parts.dataset.name,
            rank=world.rank,
            world_size=world.world_size,
            embed=self._embed_train,
            **extra,
        )

    def _step_batches(self, epoch: int, start: int, handed: list[np.ndarray]) -> Any:
        """A step-level sampler's epoch: ask for each batch right before its step (the model is
        as the step finds it), load this rank's share, yield what the DataLoader would."""
        from concurrent.futures import ThreadPoolExecutor

        tc, world = self.config.train, self.world
        with ThreadPoolExecutor(max(1, self.workers)) as pool:
            for k in itertools.count(start):
                ctx = self._context(epoch, StepContext, step=self.step, batch=k, embed_pairs=self._embed_pairs)
                self._sampler_before = self.sampler.state_dict()  # an interrupt saves this one
                batch = self.sampler.next_batch(ctx)
                if batch is None:
                    return
                batch = self.sampler.check(batch, len(self.train_set), f"batch {k} of epoch {epoch}", tc.batch_size)
                handed.append(batch)
                local = rank_slice(batch, world.rank, world.world_size)
                yield collate_pairs(list(pool.map(self.pairs.__getitem__, [(epoch, int(i)) for i in local])))

    def _epoch(self, epoch: int, resume: dict[str, Any] | None) -> None:
        import torch

        tc, world, device = self.config.train, self.world, self.device
        if resume is not None and not resume["epoch_done"]:
            lengths = [int(n) for n in resume["epoch_batch_sizes"]]
            flat = np.asarray(resume["epoch_batches"], dtype=np.int64)
            batches = np.split(flat, np.cumsum(lengths)[:-1]) if lengths else []
            start = int(resume["batches_done"])
            stats = {k: float(v) for k, v in resume["epoch_stats"].items()}
        else:
            ctx = self._context(epoch, EpochContext)
            if self.step_level:
                batches = []  # handed out step by step below
                start_epoch = getattr(self.sampler, "start_epoch", None)
                if start_epoch is not None:
                    start_epoch(ctx)
            else:
                batches = [np.asarray(b, dtype=np.int64) for b in self.sampler.batches(ctx)]
                if not batches:
                    raise GeokitError(f"sampler '{self.config.names['sampler']}' produced no batches for epoch {epoch}")
            start = 0
            stats = {"loss_sum": 0.0, "steps": 0, "images": 0, "seconds": 0.0, "skipped": 0}
        self.pairs.epoch = epoch
        self.parts.encoder.train()
        t0 = time.perf_counter() - stats["seconds"]
        done, lr, loss = start, lr_at(self.step, self.total_steps, self.warmup_steps, tc.lr), float("nan")
        if self.step_level:
            batches = batches[:start]
            source, total = self._step_batches(epoch, start, batches), None
        else:
            self.batch_keys.set(epoch, [rank_slice(b, world.rank, world.world_size) for b in batches[start:]])
            source, total = self.loader, len(self.batch_keys)
        # a bar on a terminal; elsewhere the step log lines (rate, time left) say it already
        bar = self.show if self.show is not None else show_progress()
        items = iter(progress(source, total=total, desc=f"epoch {epoch}/{tc.epochs}", enabled=bar))
        while True:
            try:
                q, r, idx, bad = next(items)
            except StopIteration:
                break
            except Exception:
                if self.stop.signal is None:
                    raise
                q, r, idx, bad = None, None, None, []  # Ctrl-C also reached (and ended) the loader's workers
            self._handle_bad(bad, epoch)
            stats["skipped"] += len(bad)
            n_local = 0 if q is None else len(q)
            sizes, stop = D.exchange_step_info(world, n_local, self.stop.signal is not None, device)
            if stop:
                stats["seconds"] = time.perf_counter() - t0
                self._interrupt(epoch, batches, done, stats)
            if sum(sizes) >= 2:
                if q is None:  # every pair of this rank's slice was unreadable
                    context = self.parts.context
                    assert context is not None  # build() makes one
                    q = torch.empty((0, 3, *context.query_size))
                    r = torch.empty((0, 3, *context.reference_size))
                    idx = torch.empty(0, dtype=torch.int64)
                lr = lr_at(self.step, self.total_steps, self.warmup_steps, tc.lr)
                torch.manual_seed(step_seed(self.config.seed, self.step))
                try:
                    loss = self.stepper.step(q, r, lr, sizes, idx)
                except NonFiniteLoss as exc:
                    raise GeokitError(
                        f"the loss became {exc.value} at epoch {epoch}, step {self.step + 1}: training "
                        f"stopped. The last good state is "
                        f"{self.state_path if self.state_path.exists() else 'none yet (no checkpoint was written)'}"
                        "; try a lower train.lr, train.amp=false, or check the data"
                    ) from None
                self.step += 1
                stats["steps"] += 1
                stats["images"] += 2 * sum(sizes)
                stats["loss_sum"] += loss
                if self.step % tc.log_every == 0:
                    # rate over this epoch so far; what is left: this run's remaining steps at that rate
                    # (evaluation and mining between epochs not included)
                    from geokit.runtime import format_duration

                    spent = max(time.perf_counter() - t0, 1e-9)
                    left = (self.total_steps - self.step) * spent / max(stats["steps"], 1)
                    log.info(
                        "epoch %d/%d step %d/%d loss %.4f lr %.2e  %.1f pairs/s, training %s left",
                        epoch,
                        tc.epochs,
                        self.step,
                        self.total_steps,
                        loss,
                        lr,
                        stats["images"] / 2 / spent,
                        format_duration(left),
                    )
                    self._log_step({"epoch": epoch, "step": self.step, "loss": loss, "lr": lr})
            done += 1
            if (
                tc.checkpoint_every
                and self.step % tc.checkpoint_every == 0
                and (self.step_level or done < len(batches))
                and sum(sizes) >= 2
            ):
                stats["seconds"] = time.perf_counter() - t0
                self._save_state(epoch, batches, done, False, stats)
        seconds = time.perf_counter() - t0
        if world.distributed:  # bad-image counts of all ranks
            counts, _ = D.exchange_step_info(world, int(stats["skipped"]), False, device)
            skipped = sum(counts)
        else:
            skipped = int(stats["skipped"])
        n_steps = int(stats["steps"])
        row: dict[str, Any] = {
            "epoch": epoch,
            "step": self.step,
            "loss": stats["loss_sum"] / max(n_steps, 1),
            "lr": lr,
            "batches": n_steps,
            "seconds": round(seconds, 3),
            "images_per_s": round(stats["images"] / max(seconds, 1e-9), 2),
        }
        if tc.bad_images == "skip":
            row["skipped_pairs"] = skipped
            self.skipped_total += skipped
        row.update(
            {
                f"loss.{k}": float(v.detach().float().mean())
                for k, v in self.parts.loss.named_parameters()
                if v.numel() == 1
            }
        )
        log.info(
            "epoch %d/%d: loss %.4f, %d batches, %.1f s (%.1f images/s)%s",
            epoch,
            tc.epochs,
            row["loss"],
            n_steps,
            seconds,
            row["images_per_s"],
            f", {skipped} pairs skipped (unreadable images)" if skipped else "",
        )
        if tc.eval_every and (epoch % tc.eval_every == 0 or epoch == tc.epochs):
            if world.is_main:
                row.update(self._evaluate(epoch))
            D.barrier(world)  # the other ranks wait for rank 0's evaluation
        self.history.append(row)
        if world.is_main:
            _append_history(self.output, row)
            self.tb.scalars({f"epoch/{k}": v for k, v in row.items() if k not in ("epoch", "step")}, epoch)
        self._save_state(epoch, batches, len(batches), True, stats)
        # A signal that arrived during the epoch's last step is seen here; under DDP it may have
        # reached one rank only (or the ranks at different moments): agree, or one rank would
        # stop while the others start the next epoch and wait for it for ever.
        _, stop = D.exchange_step_info(world, 0, self.stop.signal is not None, device)
        if stop and epoch < tc.epochs:
            self._interrupt(epoch + 1, [], 0, None)

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
        return {f"eval/{k}": v for k, v in res.metrics.items()}

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

    def _interrupt(self, epoch: int, batches: list[np.ndarray], done: int, stats: dict[str, float] | None) -> None:
        if stats is not None:
            # A step-level sampler already handed out the batch this step would have trained
            # on: save its state from before that call, so the resumed run asks again.
            before = getattr(self, "_sampler_before", None) if self.step_level and len(batches) > done else None
            self._save_state(epoch, batches[:done] if before is not None else batches, done, False, stats, before)
            where = f"epoch {epoch}, after batch {done} of {len(batches)} (step {self.step})"
        else:  # between epochs: the epoch-end state is already written
            where = f"the end of epoch {epoch - 1} (step {self.step})"
        D.barrier(self.world)
        by = self.stop.signal or "a signal to another rank"
        raise TrainingInterrupted(
            f"training stopped by {by} at {where}; the state is saved in "
            f"{self.state_path}. Re-run the same command to resume."
        )

    def _log_step(self, row: dict[str, Any]) -> None:
        if not self.world.is_main:
            return
        with open(self.output / "steps.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        self.tb.scalars({"train/loss": row["loss"], "train/lr": row["lr"]}, row["step"])


def _append_history(output: Path, row: dict[str, Any]) -> None:
    rows = _read_history(output)
    rows = [r for r in rows if r.get("epoch") != row["epoch"]] + [row]
    atomic_write_text(output / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def _read_history(output: Path) -> list[dict[str, Any]]:
    """``metrics.jsonl`` rows; a line that is not a JSON object (a file cut short by a copy or
    a full disk) is skipped with a warning: the resume state, not this log, is authoritative."""
    path = output / "metrics.jsonl"
    if not path.exists():
        return []
    rows, bad = [], []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict) and isinstance(row.get("epoch"), int):
            rows.append(row)
        else:
            bad.append(n)
    if bad:
        log.warning(
            "%s: ignored %d unreadable line(s) (line %s): cut short by a crash or a copy? "
            "Those epochs' rows are rewritten when they are run again",
            path,
            len(bad),
            ", ".join(map(str, bad[:5])),
        )
    return rows


def read_steps(output: str | Path) -> list[dict[str, Any]]:
    """``steps.jsonl`` rows, one per logged step; a step that ran again after a resume keeps its
    last value, and a line cut short by a crash is ignored."""
    path = Path(output) / "steps.jsonl"
    rows: dict[int, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows[int(row["step"])] = row
    return [rows[k] for k in sorted(rows)]


def evaluate_after_training(result: TrainResult, split: str | None = None) -> dict[str, float]:
    """Evaluate the trained parts in memory (no reload)."""
    res = run_protocol(result.parts, split)
    log.info(format_table(res.metrics, f"{result.parts.dataset.name} {res.eval_set.name}"))
    return res.metrics
