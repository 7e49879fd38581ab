"""The package layout: every module imports on its own, whatever was imported before it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import geokit
import geokit_plugins

_IMPORT_EACH_FIRST = """
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "geokit" or m.startswith(("geokit.", "geokit_plugins"))]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc().strip().splitlines()[-1])
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def _modules(package) -> list[str]:
    root = Path(package.__file__).parent
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join((package.__name__, *parts)))
    return names


def test_every_module_imports_first_in_a_fresh_interpreter():
    # A circular import shows only when a module is the first of its cycle to be imported (the
    # facade geokit.evaluation once failed that way while every test passed): each module is
    # imported with no geokit module loaded before it.
    names = _modules(geokit) + _modules(geokit_plugins)
    assert {"geokit.evaluation", "geokit.engine._loop", "geokit_plugins.samplers.dss"} <= set(names)
    out = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH_FIRST, *names], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
