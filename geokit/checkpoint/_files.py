"""Checkpoint files: atomic writes, safetensors weights with a JSON record, resume state.

Every file is written atomically (temporary file in the same folder, fsync, rename), so a crash
or a full disk never leaves a half-written checkpoint behind. No pickle anywhere.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from geokit.checkpoint._keys import add_prefix, strip_prefix
from geokit.checkpoint._records import RECORD_KEY, read_record
from geokit.errors import GeokitError


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp_path)`` then fsync and rename onto ``path``; nothing is left on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; the result follows the umask
        write(tmp_path)
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process umask (read by setting it, so set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))


def save_weights(path: str | Path, tensors: Mapping[str, Any], record: Mapping[str, Any]) -> None:
    """Write weights with ``record`` (JSON-serialisable) in the safetensors metadata."""
    from safetensors.torch import save_file

    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {RECORD_KEY: json.dumps(record, sort_keys=True, default=str)}
    atomic_write(path, lambda p: save_file(flat, str(p), metadata=meta))


def load_weights(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(tensors, record)`` of a geokit weights file."""
    from safetensors.torch import load_file

    record = read_record(path)
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one error
        raise GeokitError(f"{path}: cannot read tensors ({exc}); the file may be truncated") from None
    return tensors, record


def load_module_strict(module: Any, state: Mapping[str, Any], source: str) -> None:
    """``load_state_dict(strict=True)`` with one clear error listing missing/unexpected keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad_shape = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or bad_shape:

        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")

        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {show(unexpected)}")
        if bad_shape:
            parts.append(f"{len(bad_shape)} keys with another shape: {show(bad_shape)}")
        raise GeokitError(
            f"weights from {source} do not fit the model: "
            + "; ".join(parts)
            + ". Check that the config's encoder matches the one that was trained."
        )
    module.load_state_dict(state, strict=True)


# ------------------------------------------------------------------------------ resume state


def _split(obj: Any, tensors: dict[str, Any], prefix: str) -> Any:
    """Replace tensors/arrays in a nested structure by references into ``tensors``."""
    import torch

    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = f"t{len(tensors)}"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj))
        return {"__ndarray__": key}
    if isinstance(obj, Mapping):
        if not all(isinstance(k, str) for k in obj):
            return {"__intkeys__": [[k, _split(v, tensors, prefix)] for k, v in obj.items()]}
        return {k: _split(v, tensors, prefix) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return {"__tuple__": [_split(v, tensors, prefix) for v in obj]}
    if isinstance(obj, list):
        return [_split(v, tensors, prefix) for v in obj]
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in resume state")


def _join(obj: Any, tensors: Mapping[str, Any]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return tensors[obj["__ndarray__"]].numpy()
        if "__tuple__" in obj:
            return tuple(_join(v, tensors) for v in obj["__tuple__"])
        if "__intkeys__" in obj:
            return {k: _join(v, tensors) for k, v in obj["__intkeys__"]}
        return {k: _join(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join(v, tensors) for v in obj]
    return obj


def save_state(path: str | Path, state: Mapping[str, Any]) -> None:
    """Atomically write a nested state (dicts, lists, tuples, tensors, arrays, scalars)."""
    from safetensors.torch import save_file

    tensors: dict[str, Any] = {}
    skeleton = _split(dict(state), tensors, "")
    if not tensors:  # safetensors refuses an empty file
        import torch

        tensors["_"] = torch.zeros(0)
    meta = {"skeleton": json.dumps(skeleton)}
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=meta))


def load_state(path: str | Path) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - a safetensors handle
        return _join(json.loads(meta["skeleton"]), tensors)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one error
        raise GeokitError(f"resume state {path} is unreadable ({exc}); delete it to start over") from None


# ------------------------------------------------------------------------------ model weights


def model_tensors(encoder: Any, loss: Any = None) -> dict[str, Any]:
    """The tensors of a weights file: the encoder's as ``encoder.*``, the loss's as ``loss.*``."""
    out = add_prefix(encoder.state_dict(), "encoder.")
    if loss is not None:
        out.update(add_prefix(loss.state_dict(), "loss."))
    return out


def load_model_weights(path: str | Path, encoder: Any, loss: Any = None) -> dict[str, Any]:
    """Load a geokit weights file strictly into ``encoder`` (and ``loss``); returns its record."""
    tensors, record = load_weights(path)
    other = sorted(k for k in tensors if not k.startswith(("encoder.", "loss.")))
    if other:
        raise GeokitError(f"{path}: unexpected tensors {other[:5]} (not encoder.* or loss.*)")
    load_module_strict(encoder, strip_prefix(tensors, "encoder."), f"{path} (encoder)")
    state = strip_prefix(tensors, "loss.")
    if loss is not None and (state or list(loss.state_dict())):
        load_module_strict(loss, state, f"{path} (loss)")
    return record
