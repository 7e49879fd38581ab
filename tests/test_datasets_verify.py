"""``geokit datasets verify`` (through click's CliRunner) and the recipes in examples/configs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from dataset_layouts import make_cvact, make_cvusa, make_u1652, make_vigor

from geokit.cli import cli
from geokit.cli._datasets import datasets

cli.add_command(datasets)  # as geokit's main() does from COMMAND_MODULES
RECIPES = Path(__file__).resolve().parent.parent / "examples" / "configs"
RECIPE_NAMES = [
    "cvusa",
    "cvact-val",
    "cvact-test",
    "vigor-same",
    "vigor-cross",
    "university1652-d2s",
    "university1652-s2d",
]


def verify(*args: str):
    return CliRunner().invoke(cli, ["datasets", "verify", *args])


@pytest.mark.parametrize(
    "name, maker, extra",
    [
        ("cvusa", make_cvusa, []),
        ("cvact", make_cvact, ["--set", "split=test"]),
        ("vigor", make_vigor, ["--set", "mode=cross"]),
        ("university1652", make_u1652, ["--set", "direction=sat2drone"]),
    ],
)
def test_verify_good_layouts(tmp_path, name, maker, extra):
    maker(tmp_path)
    res = verify(name, "--root", str(tmp_path), *extra)
    assert res.exit_code == 0, res.output
    assert "OK: the layout is usable" in res.output and "train pairs" in res.output
    assert "the full dataset has" in res.output  # tiny copies are reported as subsets


def test_verify_lists_every_problem_with_file_and_line(tmp_path):
    make_cvusa(tmp_path)
    (tmp_path / "streetview/panos/0000004.jpg").unlink()
    (tmp_path / "bingmap/19/0000002.jpg").write_bytes(b"not a jpeg")
    with open(tmp_path / "splits/val-19zl.csv", "a") as fh:
        fh.write("just-one-column\n")
    res = verify("cvusa", "--root", str(tmp_path), "--full")
    assert res.exit_code == 1, res.output
    out = res.output
    assert "splits/train-19zl.csv line 4: image not found" in out
    assert "splits/train-19zl.csv line 2: cannot decode image" in out
    assert "splits/val-19zl.csv line 5: expected 'satellite,panorama" in out
    assert "FAILED: 3 errors" in out


def test_verify_missing_folder_hint_and_json(tmp_path):
    make_vigor(tmp_path)
    shutil.rmtree(tmp_path / "satellite/Seattle")
    shutil.rmtree(tmp_path / "ground/Chicago")
    (tmp_path / "ground/NewYork" / next(iter(sorted((tmp_path / "ground/NewYork").iterdir()))).name).unlink()
    res = verify("vigor", "--root", str(tmp_path))
    assert res.exit_code == 1
    assert "satellite images of Seattle not found" in res.output and "official VIGOR layout" in res.output
    assert "ground images of Chicago not found" in res.output
    assert "unknown tile" not in res.output  # Seattle's rows are not checked against absent tiles
    assert "splits/NewYork/same_area_balanced_train.txt line 1: image not found" in res.output
    res = verify("vigor", "--root", str(tmp_path), "--json")
    data = json.loads(res.output)
    assert data["ok"] is False and data["dataset"] == "vigor"
    cats = {p["category"] for p in data["problems"]}
    assert {"missing city", "missing image"} <= cats


@pytest.mark.parametrize(
    "name, extra",
    [
        ("cvusa", []),
        ("cvact", []),
        ("vigor", []),
        ("vigor", ["--set", "mode=cross"]),
        ("university1652", []),
    ],
)
def test_verify_empty_folder_reports_without_a_traceback(tmp_path, name, extra):
    res = verify(name, "--root", str(tmp_path), *extra)
    assert res.exit_code == 1, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output and "FAILED" in res.output
    if name == "vigor":  # every city is missing; the expected layout is shown once, not per city
        assert res.output.count("city folder missing") >= 2
        assert res.output.count("Expected layout") == 1


def test_verify_root_missing_shows_layout(tmp_path):
    res = verify("cvact", "--root", str(tmp_path / "nope"))
    assert res.exit_code == 1
    assert "folder not found" in res.output and "ACT_data.mat" in res.output and "ANU_data_small" in res.output


def test_verify_struct_without_field(tmp_path):
    make_cvact(tmp_path, field_names=(("trainNum", "trainInd"), ("valNum", "valIdx")))
    res = verify("cvact", "--root", str(tmp_path))
    assert res.exit_code == 1
    assert "struct 'valSet' has no field 'valInd' (fields: valNum, valIdx)" in res.output
    assert "train pairs" in res.output  # the training part was still checked


def test_verify_u1652_empty_class_folder(tmp_path):
    make_u1652(tmp_path)
    for p in (tmp_path / "test/gallery_satellite/0012").iterdir():
        p.unlink()
    res = verify("university1652", "--root", str(tmp_path))
    assert res.exit_code == 1
    assert "test/gallery_satellite/0012: class folder holds no image" in res.output


def test_verify_strict_and_sample(tmp_path):
    make_cvusa(tmp_path)
    res = verify("cvusa", "--root", str(tmp_path), "--sample", "3")
    assert res.exit_code == 0 and "3 decoded (a random sample" in res.output
    assert verify("cvusa", "--root", str(tmp_path), "--strict").exit_code == 1  # subset = warning


def test_verify_usage_errors(tmp_path):
    res = verify()
    assert res.exit_code != 0 and "geokit datasets verify NAME --root DIR" in res.output
    res = verify("cvusaa", "--root", str(tmp_path))
    assert res.exit_code != 0 and "did you mean 'cvusa'" in res.output
    res = verify("vigor", "--root", str(tmp_path), "--set", "mode=diagonal")
    assert res.exit_code != 0 and "dataset.mode" in res.output


@pytest.mark.parametrize("recipe", RECIPE_NAMES)
def test_recipes_resolve(recipe):
    path = RECIPES / f"{recipe}.yaml"
    res = CliRunner().invoke(cli, ["config", "show", "--config", str(path), "--set", "dataset.root=/tmp/x"])
    assert res.exit_code == 0, res.output
    import yaml

    cfg = yaml.safe_load(res.output)
    assert cfg["encoder"]["model"] == "convnext_base.fb_in22k_ft_in1k_384" and cfg["encoder"]["pretrained"]
    assert cfg["train"]["batch_size"] == 128 and cfg["train"]["lr"] == pytest.approx(1e-3)
    text = path.read_text()
    assert "R@1" in text  # the paper's numbers are stated
    if recipe.startswith("university1652"):
        assert cfg["train"]["epochs"] == 1 and cfg["train"]["warmup_epochs"] == pytest.approx(0.1)
        assert cfg["sampler"]["name"] == "random" and "AP" in text
    else:
        assert cfg["train"]["epochs"] == 40 and cfg["sampler"]["name"] == "dss"
        assert cfg["sampler"]["every"] == 4 and cfg["sampler"]["warm_start"] == "gps"
        assert (cfg["sampler"]["select"], cfg["sampler"]["range"]) == (64, 128)


def test_recipe_verifies_a_layout(tmp_path):
    make_cvact(tmp_path)
    res = verify("--config", str(RECIPES / "cvact-test.yaml"), "--set", f"dataset.root={tmp_path}")
    assert res.exit_code == 0, res.output
    assert "test queries" in res.output and "val queries" in res.output


def test_verify_suggests_the_root_one_level_off(tmp_path):
    make_cvusa(tmp_path / "CVUSA")
    res = verify("cvusa", "--root", str(tmp_path))  # the archive's own folder is one level down
    assert res.exit_code == 1 and f"Did you mean dataset.root={tmp_path / 'CVUSA'}?" in res.output
    res = verify("cvusa", "--root", str(tmp_path / "CVUSA" / "splits"))  # one level too deep
    assert res.exit_code == 1 and f"Did you mean dataset.root={tmp_path / 'CVUSA'}?" in res.output


def test_verify_size_messages(tmp_path):
    from geokit.registry import create
    from geokit.verify import verify_dataset

    make_cvusa(tmp_path, n_train=10)
    ds = create("dataset", "cvusa", {"root": str(tmp_path)})
    ds.known_sizes = lambda: {"train pairs": 11, "train references": 5, "test queries": 4, "test references": 400}
    msgs = [p.message for p in verify_dataset(ds, sample=0).problems]
    assert any("train pairs: 10 of the published 11 (1 missing): an incomplete download" in m for m in msgs)
    assert any("train references: 10, more than the published 5" in m for m in msgs)
    assert any("not the full dataset (test references differ" in m for m in msgs)
    assert not any("test queries" in m for m in msgs)  # matches
