"""Plugin loading: the ``geokit`` entry-point group through pluggy.

Bundled components (``geokit_plugins``, shipped in ``plugins/``) register through the same
entry-point group as third-party packages. ``GEOKIT_DISABLE_PLUGIN_AUTOLOAD=1`` loads only the
entry points of the ``geokit`` distribution itself; ``GEOKIT_DISABLE_PLUGINS=name1,name2`` (or
``geokit --disable-plugin NAME``) leaves out single plugins by entry-point name, like pytest's
``-p no:NAME``. A plugin that fails to import, implements a hook that does not exist, has a bad
hook signature, or whose registration hook raises is reported with a warning naming its entry
point and distribution, is listed as broken by ``geokit plugins``, and the others still load.
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
DISABLE_NAMES_ENV = "GEOKIT_DISABLE_PLUGINS"


def disabled_names() -> set[str]:
    """Entry-point names listed in ``GEOKIT_DISABLE_PLUGINS`` (comma or space separated)."""
    raw = os.environ.get(DISABLE_NAMES_ENV, "")
    return {n.strip() for n in raw.replace(",", " ").split() if n.strip()}


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
    # plugins left out or partly failed: name -> (info, reason); `geokit plugins` lists them
    broken: dict[str, tuple[PluginInfo, str]] = field(default_factory=dict)
    disabled: dict[str, PluginInfo] = field(default_factory=dict)
    _registries: dict[str, Registry] = field(default_factory=dict)

    def mark_broken(self, info: PluginInfo, reason: str) -> None:
        """Record (and warn about) a plugin that could not do its part; the others carry on."""
        warnings.warn(f"geokit plugin {_describe(info)} {reason}", PluginWarning, stacklevel=3)
        old = self.broken.get(info.name)
        self.broken[info.name] = (info, f"{old[1]}; {reason}" if old else reason)

    def info(self, name: str) -> PluginInfo:
        return self.plugins.get(name) or PluginInfo(name, name, None, False)

    def add_plugin(self, obj: Any, info: PluginInfo) -> bool:
        """Register ``obj``; on a bad hook, warn and leave it out. Returns whether it loaded."""
        unknown = [
            n
            for n in dir(obj)
            if n.startswith("geokit_") and callable(getattr(obj, n, None)) and not hasattr(self.pm.hook, n)
        ]
        if unknown:
            hooks = [n for n in hookspecs.REGISTRATION_HOOKS.values()] + ["geokit_register_commands"]
            details = ", ".join(f"'{n}'{closest(n, hooks)}" for n in unknown)
            self.mark_broken(info, f"was not loaded: it implements unknown hook(s) {details}.")
            return False
        try:
            self.pm.register(obj, name=info.name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            self.mark_broken(info, f"was not loaded: {exc}")
            return False
        self.plugins[info.name] = info
        self._registries.clear()
        return True

    def registry(self, kind: str) -> Registry:
        if kind not in hookspecs.REGISTRATION_HOOKS:
            raise ValueError(f"unknown component kind {kind!r}; kinds: {', '.join(hookspecs.ALL_KINDS)}")
        if kind not in self._registries:
            reg = Registry(kind)
            hook = getattr(self.pm.hook, hookspecs.REGISTRATION_HOOKS[kind])
            # Call each implementation on its own so every entry knows which plugin made it.
            # A hook that raises loses only its own entries (it may have added some before failing).
            for impl in reversed(hook.get_hookimpls()):
                info = self.plugins.get(impl.plugin_name)
                reg._plugin = impl.plugin_name
                reg._distribution = info.distribution if info else None
                before = len(reg._pending)
                try:
                    impl.function(registry=reg) if "registry" in impl.argnames else impl.function()
                except Exception as exc:  # noqa: BLE001 - a broken plugin must not take the others down
                    del reg._pending[before:]
                    reg._entries = None
                    self.mark_broken(
                        self.info(impl.plugin_name),
                        f"failed in {hookspecs.REGISTRATION_HOOKS[kind]}: "
                        f"{type(exc).__name__}: {_first_line(exc)}; its {kind}s are left out",
                    )
            self._registries[kind] = reg
        return self._registries[kind]

    def register_commands(self, cli: Any) -> None:
        """Let each plugin add commands; one that raises is reported and left out."""
        for impl in reversed(self.pm.hook.geokit_register_commands.get_hookimpls()):
            before = dict(getattr(cli, "commands", {}))
            try:
                impl.function(cli=cli)
            except Exception as exc:  # noqa: BLE001 - `geokit --help` must keep working
                if hasattr(cli, "commands"):  # drop what it half-registered
                    cli.commands.clear()
                    cli.commands.update(before)
                self.mark_broken(
                    self.info(impl.plugin_name),
                    f"failed in geokit_register_commands: {type(exc).__name__}: "
                    f"{_first_line(exc)}; its commands are left out",
                )


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    return text if len(text) <= limit else text[:limit] + "..."


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
    off = disabled_names()
    for ep in metadata.entry_points(group=GROUP):
        dist_name, version = _dist_of(ep)
        bundled = (dist_name or "").lower() == "geokit"
        if not (bundled or autoload) or ep.name in seen:
            continue
        seen.add(ep.name)
        info = PluginInfo(ep.name, ep.value, f"{dist_name} {version}" if dist_name else None, bundled)
        if ep.name in off:
            mgr.disabled[ep.name] = info
            continue
        try:
            obj = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not take the others down
            mgr.mark_broken(info, f"failed to import: {type(exc).__name__}: {_first_line(exc)}")
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
