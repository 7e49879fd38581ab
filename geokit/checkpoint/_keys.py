"""State-dict key prefixes: how a checkpoint names the parts of a model (``encoder.*``, ``loss.*``),
how wrappers prefix them (``module.``, ``model.``), and loading one state into sub-modules."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

V = TypeVar("V")


def strip_prefix(state: Mapping[str, V], prefix: str) -> dict[str, V]:
    """The entries of ``state`` whose key starts with ``prefix``, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def add_prefix(state: Mapping[str, V], prefix: str) -> dict[str, V]:
    """``state`` with ``prefix`` put before every key."""
    return {f"{prefix}{k}": v for k, v in state.items()}


def drop_prefix(state: Mapping[str, V], prefix: str) -> dict[str, V]:
    """The entries of ``state`` whose key does not start with ``prefix``."""
    return {k: v for k, v in state.items() if not k.startswith(prefix)}


def load_at_prefixes(module: Any, state: Mapping[str, Any], source: str, layouts: Sequence[Sequence[str]]) -> None:
    """Load ``state`` strictly into the sub-modules of ``module`` named by one of ``layouts``.

    Each layout is a list of prefixes (``""`` is ``module`` itself, ``"query."`` its sub-module
    ``query``); the first layout whose every sub-module has exactly the keys of ``state`` is
    used, else the last one, whose strict loading then names the keys that do not fit. So an
    encoder takes a state saved from itself, from one of its branches, or from its backbone."""
    from geokit.checkpoint._files import load_module_strict

    own = list(module.state_dict())
    keys = set(state)

    def fits(prefix: str) -> bool:
        return {k[len(prefix) :] for k in own if k.startswith(prefix)} == keys

    chosen = next((group for group in layouts[:-1] if all(fits(p) for p in group)), layouts[-1])
    for prefix in chosen:
        target = module.get_submodule(prefix.rstrip(".")) if prefix else module
        load_module_strict(target, state, source)
