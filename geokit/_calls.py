"""Calling plugin code with the optional arguments it declares (pluggy's rule for hooks:
an implementation may accept fewer arguments than are offered)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any


@functools.lru_cache(maxsize=256)
def _accepted(fn: Callable[..., Any]) -> tuple[frozenset[str], bool]:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature
        return frozenset(), False
    names = frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def accepts(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` takes a keyword argument ``name`` (by name or through ``**kwargs``)."""
    names, var = _accepted(_unwrap(fn))
    return var or name in names


def offered(fn: Callable[..., Any], optional: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of ``optional`` keyword arguments that ``fn`` accepts."""
    names, var = _accepted(_unwrap(fn))
    return dict(optional) if var else {k: v for k, v in optional.items() if k in names}


def _unwrap(fn: Callable[..., Any]) -> Callable[..., Any]:
    # nn.Module instances: look at forward, through DistributedDataParallel's wrapper.
    if type(fn).__name__ == "DistributedDataParallel":
        fn = fn.module  # type: ignore[attr-defined]
    forward = getattr(fn, "forward", None)
    return forward if forward is not None and not inspect.isfunction(fn) else fn
