"""Device, precision, seeding, progress and logging: the small facts every engine needs."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")
log = logging.getLogger("geokit")


def select_device(name: str = "auto") -> Any:
    import torch

    from geokit.errors import GeokitError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise GeokitError(f"unknown device {str(name)[:40]!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GeokitError(f"train.device={name} but CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise GeokitError(f"device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def configure_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_malloc_tuned: bool | None = None


def keep_freed_memory() -> bool:
    """Make glibc malloc keep freed memory in the process instead of returning it to the OS.

    A CPU training step frees and re-allocates the same activation and gradient buffers every
    step. With glibc's defaults, buffers above the (dynamic) mmap threshold are unmapped on free
    and the top of the heap is trimmed, so the next step touches fresh pages again: about 8,000
    minor page faults and 7-8 % of a ConvNeXt-Atto step (BENCHMARKS.md, "Training engine").
    Raising the mmap and trim thresholds to 2 GiB keeps those pages mapped. Results are
    unchanged (only where memory comes from); the cost is that freed memory stays with the
    process, so its resident size stays near its peak until it exits. Process-wide and one-way
    (glibc cannot report the previous settings, so they are not restored after training).

    Does nothing when not on glibc, when ``GEOKIT_MALLOC_TUNING=0``, or when the user tunes
    malloc already (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``,
    or ``glibc.malloc`` in ``GLIBC_TUNABLES``). Returns whether the thresholds are raised.
    """
    global _malloc_tuned
    if _malloc_tuned is not None:
        return _malloc_tuned
    _malloc_tuned = False
    env = os.environ
    if (
        env.get("GEOKIT_MALLOC_TUNING", "1") == "0"
        or "glibc.malloc" in env.get("GLIBC_TUNABLES", "")
        or any(k in env for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"))
    ):
        return False
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    big = ctypes.c_int(2**31 - 1)  # mallopt takes an int: 2 GiB is the most it accepts
    _malloc_tuned = bool(mallopt(_M_MMAP_THRESHOLD, big)) and bool(mallopt(_M_TRIM_THRESHOLD, big))
    return _malloc_tuned


def amp_dtype(device: Any, name: str | None = None) -> Any:
    """The autocast dtype: ``name`` (``float16``/``bfloat16``) when given, else bf16 where the
    hardware has it and fp16 otherwise (CUDA only)."""
    import torch

    if name is not None:
        return {"float16": torch.float16, "bfloat16": torch.bfloat16}[name]
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def autocast(device: Any, enabled: bool | str) -> contextlib.AbstractContextManager:
    """Mixed precision for the block: off for ``False``; ``True`` uses the device's default
    dtype (:func:`amp_dtype`), a dtype name (``"float16"``, ``"bfloat16"``) that one."""
    import torch

    if not enabled:
        return contextlib.nullcontext()
    name = enabled if isinstance(enabled, str) else None
    return torch.autocast(device_type=device.type, dtype=amp_dtype(device, name))


def amp_setting(device: Any, amp: bool | None, dtype: str | None) -> bool | str:
    """What the training engine passes to :func:`autocast`: ``False`` (off), or the dtype name
    (on). ``amp`` null: on for CUDA (:func:`default_amp`); ``dtype`` null: the device default."""
    import torch

    if not (default_amp(device) if amp is None else amp):
        return False
    return "float16" if amp_dtype(device, dtype) == torch.float16 else "bfloat16"


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512_BF16 or AMX); without it bf16 autocast
    is emulated and slower than float32."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def default_amp(device: Any) -> bool:
    """Mixed precision for training by default on CUDA (bf16, or fp16 with a loss scaler).

    On CPU it stays off: on the 2-core AVX512_BF16 machine (BENCHMARKS.md, "Training engine")
    bf16 autocast trained ConvNeXt-Atto/Femto at 64-128 px at 0.93-1.10x the float32 speed;
    ``train.amp=true`` turns it on.
    """
    return device.type == "cuda"


def default_embed_amp(device: Any) -> bool:
    """Mixed precision for inference-mode embedding: on CUDA, and on CPUs with native bf16,
    where it measured 1.3-2.1x faster than float32 for ConvNeXt-Atto/Femto at 64-128 px
    (BENCHMARKS.md, "Training engine")."""
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16())


def default_workers(device: Any) -> int:
    """DataLoader worker processes. On a CPU they compete with torch's threads for the same
    cores (measured in BENCHMARKS.md, "Training engine"), so data loading stays in-process."""
    return min(4, os.cpu_count() or 1) if device.type == "cuda" else 0


def default_channels_last(device: Any) -> bool:
    """channels_last memory format: on for CUDA (tensor-core convolutions prefer NHWC), off on
    CPU where it measured within noise (BENCHMARKS.md, "Training engine")."""
    return device.type == "cuda"


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def show_progress() -> bool:
    """A tqdm bar: stderr is a terminal and ``GEOKIT_PROGRESS`` is not ``0``."""
    return sys.stderr.isatty() and os.environ.get("GEOKIT_PROGRESS", "1") != "0"


def progress_interval() -> float:
    """Seconds between plain progress lines when stderr is not a terminal
    (``GEOKIT_PROGRESS_EVERY``, default 30)."""
    try:
        return max(0.0, float(os.environ.get("GEOKIT_PROGRESS_EVERY", "30")))
    except ValueError:
        return 30.0


def format_duration(seconds: float) -> str:
    """``45 s``, ``3 min 05 s``, ``2 h 07 min``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def progress(
    items: Iterable[T],
    *,
    total: int | None = None,
    desc: str = "",
    enabled: bool | None = None,
) -> Iterator[T]:
    """Where a long loop is and how long is left.

    ``enabled=None`` (the default): a tqdm bar when stderr is a terminal; otherwise (a log file,
    a pipe, a batch job) a plain line through the ``geokit`` logger every
    :func:`progress_interval` seconds (``desc: 120/572 (21 %), 3.2/s, 2 min 10 s left``; ``18.5 s each``
    when slower than 1/s), so it lands in ``train.log`` too; nothing for loops shorter than that. ``True``: the bar;
    ``False``: silent (rank > 0, or a caller that reports progress itself).
    ``GEOKIT_PROGRESS=0`` silences both.
    """
    if enabled is None:
        if os.environ.get("GEOKIT_PROGRESS", "1") == "0" or os.environ.get("RANK", "0") != "0":
            enabled = False  # off, or not rank 0 under torchrun (rank 0 speaks for all)
        elif show_progress():
            enabled = True
        else:
            yield from _progress_lines(items, total, desc)
            return
    if not enabled:
        yield from items
        return
    from tqdm import tqdm

    yield from tqdm(items, total=total, desc=desc, leave=False, dynamic_ncols=True)


def _progress_lines(items: Iterable[T], total: int | None, desc: str) -> Iterator[T]:
    import time

    every = progress_interval()
    start = last = time.monotonic()
    done = 0
    said = False
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= every and (total is None or done < total):
            last = now
            rate = done / max(now - start, 1e-9)
            where = f"{done}/{total} ({100 * done / total:.0f} %)" if total else f"{done}"
            left = f", {format_duration((total - done) / rate)} left" if total else ""
            speed = f"{rate:.1f}/s" if rate >= 1 else f"{1 / rate:.1f} s each"
            ensure_console_logging()
            log.info("%s: %s, %s%s", desc or "progress", where, speed, left)
            said = True
    if said:  # a loop that reported its progress also reports its end
        log.info("%s: %d done in %s", desc or "progress", done, format_duration(time.monotonic() - start))


class _StderrHandler(logging.StreamHandler):
    """A console handler that writes to whatever ``sys.stderr`` is at the time of the record
    (click's test runner and pytest's capture replace it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def ensure_console_logging() -> None:
    """Information lines of the ``geokit`` logger reach stderr even when nobody configured
    logging (an API user, ``geokit evaluate``); does nothing when handlers exist already."""
    if log.handlers or logging.getLogger().handlers:
        return
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)


def setup_logging(log_file: str | Path | None = None, *, level: int = logging.INFO, rank: int = 0) -> None:
    """Console (stderr) and, when given, a file in the run folder. Under DDP only rank 0 logs
    information; the other ranks print warnings and errors, prefixed with their rank."""
    if rank != 0:
        level = logging.WARNING
        log_file = None
    log.setLevel(level)
    log.propagate = False
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) for h in log.handlers):
        console = _StderrHandler()
        log.addHandler(console)
    for h in log.handlers:
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            h.setFormatter(logging.Formatter(f"[rank {rank}] %(message)s" if rank else "%(message)s"))
    for h in list(log.handlers):
        if isinstance(h, logging.FileHandler):
            log.removeHandler(h)
            h.close()
    if log_file is not None:
        fh = logging.FileHandler(log_file)
        fh.setFormatter(fmt)
        log.addHandler(fh)


def versions() -> dict[str, str]:
    """geokit, torch, timm and plugin versions for run logs and checkpoint records."""
    import importlib.metadata as md

    import geokit
    from geokit._plugin_manager import plugin_versions

    out = {"geokit": geokit.__version__}
    for pkg in ("torch", "timm", "faiss-cpu", "albumentations"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    out["plugins"] = plugin_versions()  # type: ignore[assignment]
    return out


class TensorBoard:
    """Scalars to TensorBoard when ``tensorboard`` is installed (``torch.utils.tensorboard``);
    silently nothing otherwise. Only rank 0 creates one."""

    def __init__(self, folder: str | Path | None) -> None:
        self.writer: Any = None
        if folder is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # noqa: BLE001 - tensorboard not installed (ImportError), or a broken install
            return
        self.writer = SummaryWriter(str(folder))

    def scalars(self, values: dict[str, Any], step: int) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
