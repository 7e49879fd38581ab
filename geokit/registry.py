"""Registries: one per component kind, a thin name -> factory map (in the spirit of timm's).

Plugins fill them through the registration hooks (see ``geokit.hookspecs``); the engines build
components with :func:`create`. Lookup errors list what is available and the closest name.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from geokit.errors import GeokitError, closest


class NoOptions(BaseModel):
    """Options model for components that take none."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Component:
    """One registered component."""

    kind: str
    name: str
    factory: Callable[..., Any]
    options: type[BaseModel]
    plugin: str  # entry point name or module that registered it
    distribution: str | None = None  # "name version" when it came from an installed package
    summary: str = ""
    replace: bool = False
    replaced: tuple[str, ...] = ()  # plugins whose entry this one replaced

    def parse_options(self, values: Mapping[str, Any], *, prefix: str = "") -> BaseModel:
        """Validate ``values`` against the options model; errors name the full key path."""
        try:
            return self.options.model_validate(dict(values))
        except ValidationError as exc:
            raise GeokitError(format_validation_error(exc, prefix, self.options)) from None


@dataclass
class Registry:
    """The components of one kind. Plugins call :meth:`add` from their registration hook."""

    kind: str
    _pending: list[Component] = field(default_factory=list)
    _entries: dict[str, Component] | None = None
    _plugin: str = "<unknown>"
    _distribution: str | None = None

    def add(
        self,
        name: str,
        factory: Callable[..., Any],
        *,
        options: type[BaseModel] | None = None,
        summary: str = "",
        replace: bool = False,
    ) -> None:
        """Register ``factory`` under ``name``.

        :param options: a pydantic model for the component's config section (without ``name``);
            use ``extra="forbid"`` so misspelled keys are errors. Defaults to no options.
        :param summary: one line shown by ``geokit plugins``; defaults to the factory's docstring.
        :param replace: take over a name another plugin registers (exactly one may do so).
        """
        if not name or not isinstance(name, str):
            raise GeokitError(f"plugin {self._plugin!r} registered a {self.kind} with an empty name")
        if summary == "" and factory.__doc__:
            summary = factory.__doc__.strip().splitlines()[0]
        self._pending.append(
            Component(
                self.kind, name, factory, options or NoOptions, self._plugin, self._distribution, summary, replace
            )
        )
        self._entries = None

    # --- resolution -------------------------------------------------------------------------

    @property
    def entries(self) -> dict[str, Component]:
        if self._entries is None:
            self._entries = self._resolve()
        return self._entries

    def _resolve(self) -> dict[str, Component]:
        by_name: dict[str, list[Component]] = {}
        for comp in self._pending:
            by_name.setdefault(comp.name, []).append(comp)
        out: dict[str, Component] = {}
        for name, comps in by_name.items():
            if len(comps) == 1:
                out[name] = comps[0]
                continue
            winners = [c for c in comps if c.replace]
            who = ", ".join(f"{c.plugin}" + (f" ({c.distribution})" if c.distribution else "") for c in comps)
            if len(winners) != 1:
                raise GeokitError(
                    f"{self.kind} '{name}' is registered by more than one plugin: {who}. "
                    "Uninstall one of them, or let exactly one register it with replace=True."
                )
            win = winners[0]
            out[name] = Component(**{**win.__dict__, "replaced": tuple(c.plugin for c in comps if c is not win)})
        return dict(sorted(out.items()))

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def __iter__(self) -> Iterator[Component]:
        return iter(self.entries.values())

    def names(self) -> list[str]:
        return list(self.entries)

    def get(self, name: str) -> Component:
        try:
            return self.entries[name]
        except KeyError:
            avail = ", ".join(self.names()) or "none"
            raise GeokitError(
                f"unknown {self.kind} '{name}'{closest(name, self.names())}. "
                f"Available {self.kind}s: {avail}. Run 'geokit plugins' to see where each comes from."
            ) from None


def format_validation_error(exc: ValidationError, prefix: str, model: type[BaseModel] | None = None) -> str:
    """One paragraph naming every bad key by its full dotted path."""
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        if err["type"] == "extra_forbidden":
            hint = ""
            owner = _model_at(model, err["loc"][:-1]) if model is not None else None
            if owner is not None and err["loc"]:
                hint = closest(str(err["loc"][-1]), owner.model_fields)
            lines.append(f"unknown config key '{path}'{hint}")
        elif err["type"] == "missing":
            lines.append(f"missing config key '{path}'")
        else:
            lines.append(f"config key '{path}': {_short(err['msg'])} (got {short_repr(err.get('input'))})")
        if len(lines) >= 20:  # a hostile or very wrong file: enough to start fixing it
            lines.append(f"and {len(exc.errors()) - 20:,} more problems")
            break
    return "; ".join(lines)


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _plain(x: Any) -> Any:
    """numpy scalars as plain Python numbers (``10.0``, not ``np.float64(10.0)``)."""
    item = getattr(x, "item", None)
    if callable(item) and type(x).__module__ == "numpy" and getattr(x, "ndim", 1) == 0:
        return item()
    return x


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple = 3, 6, 6, 6
_REPR.maxset, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 6, 80, 80, 40
_REPR.repr_float64 = lambda x, level: repr(float(x))  # type: ignore[attr-defined]
_REPR.repr_int64 = lambda x, level: repr(int(x))  # type: ignore[attr-defined]


def short_repr(value: Any) -> str:
    """A bounded ``repr``: never more than a few hundred characters, however large (or however
    aliased) ``value`` is; numpy scalars print as plain numbers."""
    return _short(_REPR.repr(_plain(value)))


def _model_at(model: type[BaseModel] | None, loc: tuple) -> type[BaseModel] | None:
    """The nested pydantic model that ``loc`` points into (for 'did you mean' hints)."""
    for part in loc:
        field = model.model_fields.get(str(part)) if model is not None else None
        ann = getattr(field, "annotation", None)
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return model


# ------------------------------------------------------------------------------- public API


def get_registry(kind: str) -> Registry:
    """The registry of ``kind`` ('encoder', 'loss', 'sampler', 'dataset'), plugins loaded."""
    from geokit._plugin_manager import get_manager

    return get_manager().registry(kind)


def create(kind: str, name: str, options: Mapping[str, Any] | BaseModel | None = None, **kwargs: Any) -> Any:
    """Build component ``name`` of ``kind`` with ``options`` (a mapping or the options model).

    Usable without the CLI: ``geokit.registry.create("loss", "infonce")``.
    """
    comp = get_registry(kind).get(name)
    if not isinstance(options, BaseModel):
        options = comp.parse_options(options or {}, prefix=kind)
    try:
        obj = comp.factory(options, **kwargs)
    except GeokitError:
        raise
    except Exception as exc:  # a plugin's bug: one paragraph naming the plugin, not a traceback
        text = (str(exc).strip().splitlines() or [""])[0]
        raise GeokitError(
            f"{kind} '{name}' {_origin(comp)} failed to build: {type(exc).__name__}: "
            f"{_short(text)}. Report this to the plugin's authors, or disable the plugin "
            "(GEOKIT_DISABLE_PLUGINS)."
        ) from exc
    problem = _wrong_kind(kind, obj)
    if problem:
        raise GeokitError(
            f"{kind} '{name}' {_origin(comp)} is broken: its factory returned {type(obj).__name__}, {problem}"
        )
    return obj


def origin(kind: str, name: str) -> str:
    """ "(plugin P, distribution D)" of a registered component, for messages."""
    return _origin(get_registry(kind).get(name))


def _origin(comp: Component) -> str:
    dist = f", distribution {comp.distribution}" if comp.distribution else ""
    return f"(plugin {comp.plugin}{dist})"


def _wrong_kind(kind: str, obj: Any) -> str:
    """Why ``obj`` is not a usable component of ``kind`` ('' when it is)."""
    if kind in ("encoder", "loss"):
        import torch

        return "" if isinstance(obj, torch.nn.Module) else "not a torch.nn.Module"
    if kind == "sampler":  # epoch-level or step-level
        ok = callable(getattr(obj, "batches", None)) or callable(getattr(obj, "next_batch", None))
        return "" if ok else "which has no method batches() (nor next_batch() of a step-level sampler)"
    if kind in ("transform", "reranker"):
        return "" if callable(obj) else "which is not callable"
    need = {"dataset": ("train_set", "eval_set"), "metric": ("compute",)}.get(kind, ())
    missing = [m for m in need if not callable(getattr(obj, m, None))]
    return f"which has no method {', '.join(missing)}()" if missing else ""
