"""Plugin discovery, registries and their errors."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest
from pydantic import BaseModel

import geokit
from geokit import _plugin_manager as gp
from geokit.errors import GeokitError
from geokit.registry import Registry, get_registry

# The bundled names: ARCHITECTURE.md "Contract: plugin discovery", plus those of contract v2.
CONTRACT = {
    "encoder": {"convnext"},
    "loss": {"infonce", "infonce_ce"},
    "sampler": {"random", "gps", "dss", "inbatch"},
    "dataset": {"cvusa", "cvact", "vigor", "university1652", "pairs", "synthetic"},
    "transform": {"limited_fov"},
    "metric": {"metres"},
    "reranker": {"qe"},
}


class FakeDist:
    def __init__(self, name: str, version: str = "1.2.3"):
        self.metadata = {"Name": name}
        self.version = version


class FakeEntryPoint:
    group = "geokit"

    def __init__(self, name: str, obj=None, error: Exception | None = None, dist: str = "acme-geo"):
        self.name, self.value = name, f"{dist.replace('-', '_')}.{name}"
        self.dist = FakeDist(dist)
        self._obj, self._error = obj, error

    def load(self):
        if self._error:
            raise self._error
        return self._obj


def plugin_module(name: str, **hooks) -> types.ModuleType:
    mod = types.ModuleType(name)
    for hook, fn in hooks.items():
        setattr(mod, hook, geokit.hookimpl(fn))
    return mod


@pytest.fixture
def with_entry_points(monkeypatch, fresh_plugins):
    """Install fake third-party entry points next to the real (bundled) ones."""
    real = gp.metadata.entry_points

    def install(*eps):
        monkeypatch.setattr(gp.metadata, "entry_points", lambda group: [*real(group=group), *eps])
        gp.reset_manager()

    return install


def test_bundled_components_are_registered_under_the_contract_names():
    # Every name the contract lists is registered, by the geokit distribution; and geokit
    # registers nothing the contract does not list.
    from geokit.hookspecs import ALL_KINDS

    assert set(CONTRACT) == set(ALL_KINDS), "a component kind without contract names here"
    for kind, names in CONTRACT.items():
        reg = get_registry(kind)
        missing = sorted(names - set(reg.names()))
        assert not missing, f"bundled {kind} components not registered: {missing}"
        for name in sorted(names):
            assert (reg.get(name).distribution or "").startswith("geokit "), reg.get(name)
        extra = {c.name for c in reg if (c.distribution or "").startswith("geokit ")} - names
        assert not extra, f"geokit registers {kind} components the contract does not list: {sorted(extra)}"


def test_unknown_name_lists_available_and_closest():
    with pytest.raises(GeokitError) as err:
        get_registry("loss").get("infonse")
    msg = str(err.value)
    assert "unknown loss 'infonse'" in msg and "did you mean 'infonce'" in msg
    assert "Available losses" in msg or "Available loss" in msg


def test_duplicate_names_are_an_error_naming_both_plugins():
    reg = Registry("sampler")
    reg._plugin, reg._distribution = "one", "pkg-one 1.0"
    reg.add("same", lambda o: None)
    reg._plugin, reg._distribution = "two", "pkg-two 2.0"
    reg.add("same", lambda o: None)
    with pytest.raises(GeokitError) as err:
        reg.get("same")
    assert "one (pkg-one 1.0)" in str(err.value) and "two (pkg-two 2.0)" in str(err.value)


def test_replace_true_wins_whatever_the_order():
    for order in ((False, True), (True, False)):
        reg = Registry("sampler")
        for i, replace in enumerate(order):
            reg._plugin = f"p{i}"
            reg.add("same", lambda o, i=i: i, replace=replace)
        comp = reg.get("same")
        assert comp.replace and comp.replaced == (f"p{1 - order.index(True)}",)


def test_third_party_plugin_registers_and_is_listed(with_entry_points):
    class Opts(BaseModel):
        width: int = 3

    def register(registry):
        registry.add("acme", lambda o: o.width, options=Opts, summary="the acme sampler")

    with_entry_points(FakeEntryPoint("acme", plugin_module("acme", geokit_register_samplers=register)))
    comp = get_registry("sampler").get("acme")
    assert comp.plugin == "acme" and comp.distribution == "acme-geo 1.2.3"
    assert comp.factory(comp.parse_options({"width": 5})) == 5


def test_broken_plugin_warns_with_entry_point_and_distribution_and_others_load(with_entry_points):
    with_entry_points(FakeEntryPoint("broken", error=ImportError("No module named 'missing_dep'")))
    with pytest.warns(
        gp.PluginWarning,
        match=r"'broken = acme_geo.broken' from distribution 'acme-geo 1.2.3' "
        r"failed to import: ImportError",
    ):
        reg = get_registry("loss")
    assert "infonce" in reg


def test_misspelled_hook_is_reported_with_the_closest_name(with_entry_points):
    with_entry_points(FakeEntryPoint("typo", plugin_module("typo", geokit_register_sampler=lambda registry: None)))
    with pytest.warns(
        gp.PluginWarning, match="unknown hook.*geokit_register_sampler.*did you mean 'geokit_register_samplers'"
    ):
        gp.get_manager()
    assert "typo" not in gp.get_manager().plugins


def test_bad_hook_signature_is_reported(with_entry_points):
    with_entry_points(
        FakeEntryPoint("badsig", plugin_module("badsig", geokit_register_losses=lambda registry, extra: None))
    )
    with pytest.warns(gp.PluginWarning, match="badsig"):
        gp.get_manager()
    assert "badsig" not in gp.get_manager().plugins


def test_disable_autoload_keeps_only_bundled(with_entry_points, monkeypatch):
    monkeypatch.setenv(gp.DISABLE_ENV, "1")
    with_entry_points(
        FakeEntryPoint(
            "acme",
            plugin_module("acme", geokit_register_samplers=lambda registry: registry.add("acme", lambda o: None)),
        )
    )
    assert "acme" not in get_registry("sampler")
    assert "random" in get_registry("sampler")


def test_plugins_json_lists_kind_name_plugin_distribution():
    from click.testing import CliRunner

    from geokit.cli import cli

    out = CliRunner().invoke(cli, ["plugins", "--json"])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.output)
    assert {"kind", "name", "plugin", "distribution", "version"} <= set(rows[0])
    assert {(r["kind"], r["name"]) for r in rows} >= {("encoder", "convnext"), ("loss", "infonce")}


def test_startup_does_not_import_torch():
    # `geokit --help` and `geokit plugins` must stay light: no torch, timm, faiss or albumentations.
    code = (
        "import sys; from geokit.cli import main\n"
        "try:\n    main(['plugins'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'timm', 'faiss', 'albumentations', 'cv2', 'scipy') if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


def test_every_hookspec_is_documented():
    # Like datasette's doc test: the spec docstrings are the reference docs.
    from geokit import hookspecs

    for name in dir(hookspecs):
        if name.startswith("geokit_"):
            doc = getattr(hookspecs, name).__doc__ or ""
            assert len(doc.strip()) > 80 and ":param" in doc, f"{name} needs a real docstring"


def test_core_names_no_bundled_component():
    # The core knows no component: no imports of geokit_plugins, and no string constant in code
    # (docstrings aside) that is the name of a bundled component.
    import ast
    from pathlib import Path

    bundled = {
        c.name for kind in CONTRACT for c in get_registry(kind) if (c.distribution or "").startswith("geokit ")
    } | set().union(*CONTRACT.values())
    core = Path(geokit.__file__).parent
    checked = sorted(core.rglob("*.py"))
    # every subpackage is walked (a flat glob once missed engine/, retrieval/, checkpoint/, cli/)
    assert {p.parent.name for p in checked} >= {"geokit", "engine", "retrieval", "checkpoint", "cli"}
    for path in checked:
        if path.name == "_testing_support.py":  # tiny_config: a ready-made test recipe, never used by the engines
            continue
        tree = ast.parse(path.read_text())
        docstrings = {
            id(n.body[0].value)
            for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
            and n.body
            and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
                assert not any(m.startswith("geokit_plugins") for m in mods), f"{path} imports a plugin"
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                assert node.value not in bundled, f"{path}:{node.lineno} names component {node.value!r}"
