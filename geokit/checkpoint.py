"""One checkpoint format: safetensors tensors + a JSON record. No pickle anywhere.

- ``model.safetensors``: the shareable weights (``encoder.*``, ``loss.*``) with the record in the
  safetensors metadata under ``geokit`` (encoder config, per-view input sizes, mean/std,
  embedding dim, dataset, metrics, versions).
- Resume state (optimizer, RNG, sampler, epoch/step) is kept apart from the weights, as a
  safetensors file whose nested structure is a JSON skeleton in its metadata.

Every file is written atomically (temporary file in the same folder, fsync, rename), so a crash
or a full disk never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geokit.errors import GeokitError

RECORD_KEY = "geokit"


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


def read_record(path: str | Path) -> dict[str, Any]:
    """The JSON record of a geokit weights file (without loading the tensors)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise GeokitError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one error
        raise GeokitError(
            f"{path} is not a readable safetensors file ({exc}); a geokit checkpoint "
            "is a .safetensors file written by 'geokit train'"
        ) from None
    if RECORD_KEY not in meta:
        raise GeokitError(f"{path} has no geokit record in its metadata: not a geokit checkpoint")
    try:
        record = json.loads(meta[RECORD_KEY])
    except (ValueError, RecursionError) as exc:
        raise GeokitError(f"{path}: the geokit record is not valid JSON ({str(exc)[:200]})") from None
    if not isinstance(record, dict):
        raise GeokitError(f"{path}: the geokit record is not a JSON object")
    validate_record(record, str(path))
    return record


# A record is read from a file that may come from anyone: what it says is checked against these
# bounds before anything is allocated from it (a 12000x12000 input size would cost gigabytes per
# image; std 0 would divide by zero and score NaN).
MAX_INPUT_SIDE = 4096
MAX_EMBEDDING_DIM = 65536


def validate_record(record: Mapping[str, Any], source: str) -> None:
    """Check the keys of a checkpoint record that decide sizes and arithmetic (those present):
    ``query_size``/``reference_size`` two integers in [1, MAX_INPUT_SIDE]; ``mean``/``std``
    three finite numbers (std > 0), or one such triple per view; ``embedding_dim`` an integer in [1, MAX_EMBEDDING_DIM];
    ``encoder`` a mapping with a name. One paragraph naming the key on failure."""
    from geokit.registry import short_repr

    def bad(key: str, want: str) -> GeokitError:
        return GeokitError(
            f"{source}: the checkpoint record's '{key}' is {short_repr(record[key])}; "
            f"expected {want}. The file is damaged or was not written by geokit."
        )

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_num(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)

    v: Any  # a record's values are whatever the JSON held
    for key in ("query_size", "reference_size"):
        v = record.get(key)
        if key in record and not (
            isinstance(v, (list, tuple)) and len(v) == 2 and all(is_int(x) and 1 <= x <= MAX_INPUT_SIDE for x in v)
        ):
            raise bad(key, f"[height, width], each an integer from 1 to {MAX_INPUT_SIDE}")

    def triple(v: Any, positive: bool) -> bool:
        return (
            isinstance(v, (list, tuple))
            and len(v) == 3
            and all(is_num(x) and abs(x) <= 1e3 and (x > 1e-6 if positive else True) for x in v)
        )

    for key, positive in (("mean", False), ("std", True)):
        v = record.get(key)
        per_view = isinstance(v, Mapping) and set(v) == {"query", "reference"}
        if key in record and not (triple(v, positive) or (per_view and all(triple(x, positive) for x in v.values()))):
            raise bad(
                key,
                "three finite numbers"
                + (" greater than 0" if positive else "")
                + ", or {'query': [...], 'reference': [...]} of them",
            )
    v = record.get("embedding_dim")
    if "embedding_dim" in record and not (is_int(v) and 1 <= v <= MAX_EMBEDDING_DIM):
        raise bad("embedding_dim", f"an integer from 1 to {MAX_EMBEDDING_DIM}")
    v = record.get("encoder")
    if "encoder" in record and not (isinstance(v, Mapping) and isinstance(v.get("name"), str)):
        raise bad("encoder", "the encoder's config section (a mapping with a 'name')")


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


# ------------------------------------------------------------------------------ foreign weights

# Keys that wrap a state dict inside a bigger saved object (training checkpoints of other
# projects): {"state_dict": {...}}, {"model": {...}, "optimizer": ..., "epoch": ...}.
_WRAPPER_KEYS = ("state_dict", "model", "module", "network", "net")


@dataclass
class ForeignWeights:
    """A weights file from outside geokit, normalised (see :func:`read_foreign_weights`).

    ``model``: the network's state dict with wrapper prefixes removed (for Sample4Geo's released
    checkpoints: the timm model's own keys). ``extra``: tensors saved beside the network that are
    not part of it (Sample4Geo's ``logit_scale``; a geokit checkpoint's ``loss.*`` without the
    prefix): an encoder hands them on as ``loss_state``. ``layout``: what was recognised, in words.
    """

    model: dict[str, Any]
    extra: dict[str, Any]
    layout: str


def _describe(obj: Any) -> str:
    import torch

    if isinstance(obj, torch.Tensor):
        return f"tensor {tuple(obj.shape)}"
    return type(obj).__name__


def _show_keys(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def normalise_state(obj: Any, source: str) -> ForeignWeights:
    """Turn a loaded weights object into :class:`ForeignWeights`, or refuse it clearly.

    Recognised layouts (checked in this order):

    - a wrapper dict holding the state dict under ``state_dict``/``model``/``module`` (other
      entries such as ``optimizer`` or ``epoch`` are ignored);
    - a geokit checkpoint: ``encoder.*`` (→ ``model``) and ``loss.*`` (→ ``extra``);
    - DataParallel/DDP's ``module.`` prefix on every key (removed);
    - Sample4Geo's released layout: the network under ``model.`` plus top-level tensors without a
      dot such as ``logit_scale`` (→ ``extra``);
    - anything else is taken as a plain state dict (e.g. timm's), checked later by strict loading.

    :raises GeokitError: not a dict, nested dicts without a known wrapper key, non-string keys
        or non-tensor values (each names ``source`` and a few offending keys).
    """
    import torch

    steps: list[str] = []
    while isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((k for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            nested = [str(k) for k, v in obj.items() if isinstance(v, Mapping)]
            if nested:
                raise GeokitError(
                    f"{source}: unknown layout: a dict holding dicts ({_show_keys(nested)}) but none "
                    f"of {', '.join(_WRAPPER_KEYS)}; expected a state dict (name -> tensor), "
                    "possibly under one of those keys"
                )
            bad = [f"{k} ({_describe(v)})" for k, v in obj.items() if not isinstance(v, torch.Tensor)]
            raise GeokitError(
                f"{source}: holds values that are not tensors: {_show_keys(bad)}; "
                "expected a state dict (name -> tensor)"
            )
        steps.append(f"under '{inner}'")
        obj = obj[inner]
    if not isinstance(obj, Mapping):
        raise GeokitError(
            f"{source}: unknown layout: the file holds a {_describe(obj)}, not a state "
            "dict (name -> tensor); save weights with torch.save(model.state_dict(), path)"
        )
    if not obj:
        raise GeokitError(f"{source}: the state dict is empty")
    bad_keys = [repr(k) for k in obj if not isinstance(k, str)]
    if bad_keys:
        raise GeokitError(f"{source}: unknown layout: keys that are not strings: {_show_keys(bad_keys)}")
    state: dict[str, Any] = dict(obj)
    extra: dict[str, Any] = {}
    if any(k.startswith("encoder.") for k in state) and all(k.startswith(("encoder.", "loss.")) for k in state):
        extra = {k[len("loss.") :]: v for k, v in state.items() if k.startswith("loss.")}
        state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
        steps.append("geokit checkpoint (encoder.*, loss.*)")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
        steps.append("DataParallel prefix 'module.'")
    if all(k.startswith("model.") or "." not in k for k in state) and any(k.startswith("model.") for k in state):
        loose = {k: v for k, v in state.items() if not k.startswith("model.")}
        if loose and extra:
            raise GeokitError(
                f"{source}: unknown layout: top-level tensors {_show_keys(sorted(loose))} beside a geokit loss state"
            )
        extra = extra or loose
        state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
        steps.append("network under 'model.'" + (f" with {', '.join(sorted(loose))}" if loose else ""))
    return ForeignWeights(state, extra, "; ".join(steps) or "plain state dict")


def read_tensor_file(path: str | Path, *, what: str = "weights") -> Any:
    """Load a ``.safetensors`` file, or a torch file with ``weights_only=True`` (a pickle that
    would run code, or build objects other than tensors and containers, is refused unread)."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise GeokitError(f"{what}: file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - any unreadable file is one error
            raise GeokitError(f"{what}: cannot read {path} as safetensors ({exc})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise GeokitError(
            f"{what}: refused {path}: it holds Python objects other than tensors, which geokit never "
            f"unpickles (torch.load weights_only=True: {first}). Re-save the weights alone with "
            "torch.save(model.state_dict(), path), or as .safetensors"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one error
        raise GeokitError(f"{what}: cannot read {path} ({type(exc).__name__}: {exc})") from None


def read_foreign_weights(path: str | Path, *, what: str = "encoder.weights") -> ForeignWeights:
    """Read and normalise a weights file made outside geokit (or by geokit): Sample4Geo's released
    checkpoints as they are, DataParallel saves, plain timm state dicts, geokit checkpoints.
    One place for every encoder plugin; see :func:`normalise_state` for the layouts."""
    return normalise_state(read_tensor_file(path, what=what), f"{what} {path}")
