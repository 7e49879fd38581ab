"""The run folder: its file names, the one-run-per-folder lock, clean-up of interrupted writes,
the writable/free-space check, and the ``metrics.jsonl`` / ``steps.jsonl`` logs.

A run folder holds ``config.yaml`` (resolved), ``train.log`` (config and versions at the top),
``metrics.jsonl`` (one line per epoch), ``steps.jsonl`` (loss and lr every ``train.log_every``
steps), ``state.safetensors`` (resume state, rewritten atomically at every epoch end and every
``train.checkpoint_every`` steps) and, at the end, ``model.safetensors`` (the shareable weights +
record).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from geokit.checkpoint import atomic_write_text
from geokit.errors import GeokitError
from geokit.runtime import log

STATE = "state.safetensors"
WEIGHTS = "model.safetensors"
LOCK = ".geokit-train.lock"


def lock_output(output: Path) -> Any:
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


def clean_temp_files(output: Path) -> None:
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


def check_writable(output: Path, need_bytes: int) -> None:
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


def append_history(output: Path, row: dict[str, Any]) -> None:
    rows = read_history(output)
    rows = [r for r in rows if r.get("epoch") != row["epoch"]] + [row]
    atomic_write_text(output / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def read_history(output: Path) -> list[dict[str, Any]]:
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


def append_step(output: Path, row: dict[str, Any]) -> None:
    """One ``steps.jsonl`` line (rank 0 only)."""
    with open(output / "steps.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")
