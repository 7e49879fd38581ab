"""Plugin loading: the ``geokit`` entry-point group through pluggy.

Bundled components (``geokit_plugins``, shipped in ``plugins/``) register through the same
entry-point group as third-party packages. ``GEOKIT_DISABLE_PLUGIN_AUTOLOAD=1`` loads only the
entry points of the ``geokit`` distribution itself. A plugin that fails to import, implements a
hook that does not exist, or has a bad hook signature is reported with a warning naming its entry
point and distribution, and the others still load.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from geokit import hookspecs
from geokit.errors import closest
from geokit.registry import Registry

GROUP = "geokit"
DISABLE_ENV = "GEOKIT_DISABLE_PLUGIN_AUTOLOAD"


class PluginWarning(UserWarning):
    """A plugin could not be loaded; the others were."""


@dataclass
class PluginInfo:
    name: str  # entry point name (or module name for plugins registered in code)
    value: str  # "module" the entry point points at
    distribution: str | None  # "dist version"
    bundled: bool


@dataclass
class Manager:
    """A pluggy PluginManager plus the per-kind registries it fills (a typed facade)."""

    pm: pluggy.PluginManager
    plugins: dict[str, PluginInfo] = field(default_factory=dict)
    _registries: dict[str, Registry] = field(default_factory=dict)

    def add_plugin(self, obj: Any, info: PluginInfo) -> bool:
        """Register ``obj``; on a bad hook, warn and leave it out. Returns whether it loaded."""
        where = _describe(info)
        unknown = [n for n in dir(obj) if n.startswith("geokit_") and callable(getattr(obj, n, None))
                   and not hasattr(self.pm.hook, n)]
        if unknown:
            hooks = [n for n in hookspecs.REGISTRATION_HOOKS.values()] + ["geokit_register_commands"]
            details = ", ".join(f"'{n}'{closest(n, hooks)}" for n in unknown)
            warnings.warn(f"geokit plugin {where} was not loaded: it implements unknown hook(s) "
                          f"{details}.", PluginWarning, stacklevel=3)
            return False
        try:
            self.pm.register(obj, name=info.name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            warnings.warn(f"geokit plugin {where} was not loaded: {exc}", PluginWarning, stacklevel=3)
            return False
        self.plugins[info.name] = info
        self._registries.clear()
        return True

    def remove_plugin(self, name: str) -> None:
        self.pm.unregister(name=name)
        self.plugins.pop(name, None)
        self._registries.clear()

    def registry(self, kind: str) -> Registry:
        if kind not in hookspecs.REGISTRATION_HOOKS:
            raise ValueError(f"unknown component kind {kind!r}; kinds: {', '.join(hookspecs.KINDS)}")
        if kind not in self._registries:
            reg = Registry(kind)
            hook = getattr(self.pm.hook, hookspecs.REGISTRATION_HOOKS[kind])
            # Call each implementation on its own so every entry knows which plugin made it.
            for impl in reversed(hook.get_hookimpls()):
                info = self.plugins.get(impl.plugin_name)
                reg._plugin = impl.plugin_name
                reg._distribution = info.distribution if info else None
                impl.function(registry=reg) if "registry" in impl.argnames else impl.function()
            self._registries[kind] = reg
        return self._registries[kind]

    def register_commands(self, cli: Any) -> None:
        self.pm.hook.geokit_register_commands(cli=cli)


def _describe(info: PluginInfo) -> str:
    dist = f" from distribution '{info.distribution}'" if info.distribution else ""
    return f"'{info.name} = {info.value}'{dist}"


def _dist_of(ep: metadata.EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, None
    return dist.metadata["Name"], dist.version


def load_manager(autoload: bool | None = None) -> Manager:
    """A fresh manager with the ``geokit`` entry points loaded."""
    if autoload is None:
        autoload = os.environ.get(DISABLE_ENV, "").strip().lower() in ("", "0", "false", "no")
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    mgr = Manager(pm)
    seen: set[str] = set()
    for ep in metadata.entry_points(group=GROUP):
        dist_name, version = _dist_of(ep)
        bundled = (dist_name or "").lower() == "geokit"
        if not (bundled or autoload) or ep.name in seen:
            continue
        seen.add(ep.name)
        info = PluginInfo(ep.name, ep.value, f"{dist_name} {version}" if dist_name else None, bundled)
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not take the others down
            warnings.warn(f"geokit plugin {_describe(info)} failed to import: "
                          f"{type(exc).__name__}: {exc}", PluginWarning, stacklevel=2)
            continue
        mgr.add_plugin(obj, info)
    pm.check_pending()  # the per-plugin check above already left out unknown hooks; this is the net
    return mgr


_MANAGER: Manager | None = None


def get_manager() -> Manager:
    """The process-wide manager (loaded on first use)."""
    global _MANAGER
    if _MANAGER is None:
        _MANAGER = load_manager()
    return _MANAGER


def reset_manager() -> None:
    """Forget the loaded plugins (tests, or after installing a package at run time)."""
    global _MANAGER
    _MANAGER = None


def plugin_versions() -> dict[str, str]:
    """``{plugin: distribution version}`` of every loaded plugin, for run logs and checkpoints."""
    return {n: (i.distribution or "local") for n, i in sorted(get_manager().plugins.items())}
