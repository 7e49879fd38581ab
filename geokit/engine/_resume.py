"""Resuming a run: the saved state (:class:`ResumeState`, ``state.safetensors``) and the check
that the config has not changed in a way that would mix two runs."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np
from pydantic import BaseModel

from geokit.checkpoint import load_state, save_state
from geokit.config import RESUME_FREE_FIELD, Config, read_yaml
from geokit.engine._rundir import STATE, WEIGHTS
from geokit.engine._stats import EpochStats
from geokit.errors import GeokitError
from geokit.registry import short_repr
from geokit.runtime import log

STATE_FORMAT = 2


def resume_free_keys(model: type[BaseModel] = Config) -> frozenset[tuple[str, ...]]:
    """The config keys (as paths, e.g. ``("train", "workers")``) that may differ between a run and
    its resumption: the fields of ``model`` and its nested sections declared with
    ``json_schema_extra=RESUME_FREE_FIELD`` (see :mod:`geokit.config`)."""
    found: set[tuple[str, ...]] = set()

    def walk(m: type[BaseModel], prefix: tuple[str, ...]) -> None:
        for name, field in m.model_fields.items():
            if field.json_schema_extra == RESUME_FREE_FIELD:
                found.add((*prefix, name))
            for arg in (field.annotation, *get_args(field.annotation)):
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    walk(arg, (*prefix, name))

    walk(model, ())
    return frozenset(found)


RESUME_FREE = resume_free_keys()


def _comparable(cfg: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(cfg))
    for *sections, key in RESUME_FREE:
        node = out
        for sec in sections:
            node = node.get(sec, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(key, None)
    return out


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


def check_resume_config(output: Path, new: dict[str, Any], force: bool) -> int | None:
    """Refuse to resume with another config (naming the keys) unless forced; only raising
    ``train.epochs`` is allowed. Returns the saved epochs when they were raised."""
    saved, state_path = output / "config.yaml", output / STATE
    has_run = state_path.exists() or (output / WEIGHTS).exists()
    if not has_run:
        return None
    if not saved.exists():
        if force:
            log.warning("%s holds a run without its config.yaml; resuming with this config (--force)", output)
            return None
        raise GeokitError(
            f"{output} holds a run ({STATE if state_path.exists() else WEIGHTS}) but "
            "no config.yaml, so it cannot be checked that this config is the same. "
            "Use another --output, delete the folder to start over, or pass --force "
            "to resume with this config anyway."
        )
    try:
        old = read_yaml(saved)
    except GeokitError as exc:
        if not force:
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
    if force:
        log.warning("resuming %s with a different config (--force): %s", output, shown)
        return None
    raise GeokitError(
        f"{output} holds a run with a different config ({saved}): {shown}. "
        "Resuming would mix two runs. Use another --output, delete the folder to start "
        "over, or pass --force to resume with the new values (raising only train.epochs "
        "needs no --force: the schedule is extended)."
    )


@dataclass
class ResumeState:
    """Everything a run needs to continue exactly where it stopped (``state.safetensors``).

    :ivar epoch: the epoch in progress, or the last one finished (``epoch_done``).
    :ivar batches_done: batches of ``epoch`` already trained on (all of them when ``epoch_done``).
    :ivar step: optimisation steps done in the whole run.
    :ivar batches: the epoch's global batches (pair indices), as the sampler handed them out.
    :ivar stats: the epoch's running totals.
    :ivar encoder, loss, optimizer, scaler, sampler: their ``state_dict()``.
    :ivar torch_rng, numpy_rng, python_rng: the global random generators' states.
    """

    epoch: int
    epoch_done: bool
    batches_done: int
    step: int
    batches: list[np.ndarray]
    stats: EpochStats
    encoder: dict[str, Any]
    loss: dict[str, Any]
    optimizer: dict[str, Any]
    scaler: dict[str, Any]
    sampler: dict[str, Any]
    torch_rng: Any
    numpy_rng: list[Any]
    python_rng: Any

    def restore(self, path: Path, *, encoder: Any, loss: Any, optimizer: Any, scaler: Any, sampler: Any) -> None:
        """Load the saved states into this run's objects and the global RNGs; a state from
        another model (e.g. resumed with --force after changing it) or a damaged one is an error
        naming ``path``."""
        import torch

        try:
            encoder.load_state_dict(self.encoder)
            loss.load_state_dict(self.loss)
            optimizer.load_state_dict(self.optimizer)
            if self.scaler and scaler.is_enabled():  # empty when saved by a run without fp16
                scaler.load_state_dict(self.scaler)
            sampler.load_state_dict(self.sampler)
            torch.set_rng_state(self.torch_rng)
            np.random.set_state(tuple(self.numpy_rng))
            random.setstate(self.python_rng)
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise state_mismatch(path, exc) from None

    @property
    def next_epoch(self) -> int:
        """The epoch the resumed run starts in."""
        return self.epoch + (1 if self.epoch_done else 0)

    def where(self) -> str:
        """Where the run stopped, in words."""
        return (
            f"after epoch {self.epoch}" if self.epoch_done else f"in epoch {self.epoch} after batch {self.batches_done}"
        )

    def to_dict(self) -> dict[str, Any]:
        """The on-disk layout (format :data:`STATE_FORMAT`): batches flattened with their sizes."""
        sizes = np.asarray([len(b) for b in self.batches], dtype=np.int64)
        flat = np.concatenate(self.batches).astype(np.int64) if self.batches else np.zeros(0, np.int64)
        return {
            "format": STATE_FORMAT,
            "epoch": self.epoch,
            "epoch_done": self.epoch_done,
            "batches_done": self.batches_done,
            "step": self.step,
            "epoch_batches": flat,
            "epoch_batch_sizes": sizes,
            "epoch_stats": self.stats.to_state(),
            "encoder": self.encoder,
            "loss": self.loss,
            "optimizer": self.optimizer,
            "scaler": self.scaler,
            "sampler": self.sampler,
            "torch_rng": self.torch_rng,
            "numpy_rng": self.numpy_rng,
            "python_rng": self.python_rng,
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> ResumeState:
        """From :meth:`to_dict`'s layout; a missing or malformed entry raises KeyError, ValueError
        or TypeError (the caller names the file)."""
        lengths = [int(n) for n in state["epoch_batch_sizes"]]
        flat = np.asarray(state["epoch_batches"], dtype=np.int64)
        return cls(
            epoch=int(state["epoch"]),
            epoch_done=bool(state["epoch_done"]),
            batches_done=int(state["batches_done"]),
            step=int(state["step"]),
            batches=np.split(flat, np.cumsum(lengths)[:-1]) if lengths else [],
            stats=EpochStats.from_state(state["epoch_stats"]),
            encoder=state["encoder"],
            loss=state["loss"],
            optimizer=state["optimizer"],
            scaler=state["scaler"],
            sampler=state["sampler"],
            torch_rng=state["torch_rng"],
            numpy_rng=state["numpy_rng"],
            python_rng=state["python_rng"],
        )

    def save(self, path: Path) -> None:
        """Write atomically (temp file, fsync, rename); a failed write leaves the previous file."""
        try:
            save_state(path, self.to_dict())
        except OSError as exc:  # e.g. a full disk: atomic_write left the previous file untouched
            before = "the previous checkpoint is intact" if path.exists() else "no checkpoint exists yet"
            raise GeokitError(
                f"could not write the checkpoint {path} "
                f"({exc.strerror or exc}); {before}. Free some space and re-run the same "
                "command to resume."
            ) from None

    @classmethod
    def load(cls, path: Path) -> ResumeState:
        state = load_state(path)
        if state.get("format") != STATE_FORMAT:
            raise GeokitError(
                f"{path} was written by another geokit version (format "
                f"{state.get('format')}, expected {STATE_FORMAT}); delete it to start over"
            )
        try:
            return cls.from_dict(state)
        except (KeyError, ValueError, TypeError) as exc:
            raise state_mismatch(path, exc) from None


def state_mismatch(path: Path, exc: Exception) -> GeokitError:
    """The error for a state that does not fit this run (another model, or damaged)."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return GeokitError(
        f"the resume state {path} does not fit this run's model, optimizer "
        f"or sampler ({type(exc).__name__}: {text}). Use another --output, or delete "
        "the state to start over."
    )
