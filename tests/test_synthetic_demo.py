"""`geokit demo` end to end on a shrunken world (tiny map, one epoch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from geokit.cli import _load_plugin_commands, cli
from geokit_plugins.datasets.synthetic import DEMO_CONFIG

SHRINK = [
    "dataset.map_size=320",
    "dataset.locations=120",
    "dataset.spacing=10",
    "dataset.tile_metres=40",
    "dataset.query_size=[32,128]",
    "dataset.reference_size=[32,32]",
    "dataset.test_fraction=0.3",
    "dataset.val_fraction=0.15",
    "train.epochs=1",
    "train.batch_size=8",
    "eval.batch_size=32",
]


def test_demo_config_is_the_example() -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "configs" / "demo.yaml"
    assert example.is_symlink() and example.resolve() == DEMO_CONFIG.resolve()


@pytest.mark.slow
def test_shrunken_demo_end_to_end(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GEOKIT_CACHE", str(tmp_path / "cache"))
    if "demo" not in cli.commands:
        _load_plugin_commands()
    out = tmp_path / "demo"
    args = ["demo", "--output", str(out)] + [a for s in SHRINK for a in ("--set", s)]
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("R@1", "R@5", "R@10", "R@1%", "queries", "references"):
        assert key in metrics
    assert metrics["queries"] == metrics["references"] > 0
    for name in ("retrieval.png", "training_curve.png", "map.png"):
        with Image.open(out / name) as im:
            assert im.size[0] > 100
    hist = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert "eval/R@1" in hist[-1]  # training-time evaluation feeds the curve
    assert "x chance" in res.output and str(out / "map.png") in res.output
    assert (out / "model.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir())[0].startswith("synthetic-")
    # the demo's numbers are `geokit evaluate` on the run's config and weights (one code path)
    res_eval = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "--config",
            str(out / "config.yaml"),
            "--checkpoint",
            str(out / "model.safetensors"),
            "--output",
            str(tmp_path / "eval.json"),
        ],
        catch_exceptions=False,
    )
    assert res_eval.exit_code == 0, res_eval.output
    assert json.loads((tmp_path / "eval.json").read_text()) == metrics
    # re-running on the finished folder reuses the world and the weights
    res2 = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res2.exit_code == 0 and json.loads((out / "metrics.json").read_text()) == metrics
