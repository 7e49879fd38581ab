"""Weights made outside geokit (Sample4Geo releases, DataParallel saves, timm state dicts):
read safely and normalised to a state dict."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geokit.checkpoint._keys import drop_prefix, strip_prefix
from geokit.errors import GeokitError

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
        extra = strip_prefix(state, "loss.")
        state = strip_prefix(state, "encoder.")
        steps.append("geokit checkpoint (encoder.*, loss.*)")
    if all(k.startswith("module.") for k in state):
        state = strip_prefix(state, "module.")
        steps.append("DataParallel prefix 'module.'")
    if all(k.startswith("model.") or "." not in k for k in state) and any(k.startswith("model.") for k in state):
        loose = drop_prefix(state, "model.")
        if loose and extra:
            raise GeokitError(
                f"{source}: unknown layout: top-level tensors {_show_keys(sorted(loose))} beside a geokit loss state"
            )
        extra = extra or loose
        state = strip_prefix(state, "model.")
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
