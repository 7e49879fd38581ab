"""The example third-party package installs, shows up in `geokit plugins`, passes the
conformance kit, and trains (in a separate target folder, so the project venv stays clean)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from geokit.testing import make_pairs_dataset, tiny_config

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "plugin-example"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(EXAMPLE),
        ],
        check=True,
        capture_output=True,
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]),
        "GEOKIT_PROGRESS": "0",
    }
    return env


def geokit(env, *args, **kw):
    return subprocess.run([sys.executable, "-m", "geokit", *args], capture_output=True, text=True, env=env, **kw)


def test_listed_with_its_distribution(installed):
    out = geokit(installed, "plugins", "--json")
    assert out.returncode == 0, out.stderr
    rows = {(r["kind"], r["name"]): r for r in json.loads(out.stdout)}
    for key in (("sampler", "blocks"), ("dataset", "jsonl")):
        assert rows[key]["distribution"] == "geokit-example-plugin 0.1.0" and rows[key]["plugin"] == "example"
    assert ("sampler", "random") in rows  # bundled ones still there


@pytest.mark.slow
def test_passes_the_conformance_kit_and_trains(installed, tmp_path):
    code = "from geokit.testing import check_sampler; check_sampler('blocks', {'block': 3}); print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=installed)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
    # A jsonl dataset made from a generated pairs folder.
    root = make_pairs_dataset(tmp_path / "data", n_train=16, n_test=8)
    for split in ("train", "test"):
        lines = (root / f"{split}.csv").read_text().splitlines()[1:]
        (root / f"{split}.jsonl").write_text(
            "".join(json.dumps(dict(zip(("query", "reference", "lat", "lon"), ln.split(",")))) + "\n" for ln in lines)
        )
    cfg = tiny_config(
        root,
        sampler={"name": "blocks", "block": 2},
        train={"epochs": 1},
        dataset={"name": "jsonl", "root": str(root), "query_size": [32, 128], "reference_size": [32, 32]},
    )
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    out = geokit(installed, "train", "--config", str(tmp_path / "run.yaml"), "--output", str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "run" / "model.safetensors").is_file()
