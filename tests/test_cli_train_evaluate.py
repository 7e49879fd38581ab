"""End to end: `geokit train` then `geokit evaluate` on a tiny generated pairs dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from geokit.checkpoint import read_record
from geokit.cli import cli
from geokit.testing import tiny_config

pytestmark = pytest.mark.slow  # trains once through the CLI (about 20 s), evaluates from it


@pytest.fixture(scope="module")
def trained(tmp_path_factory, pairs_root):
    """One 2-epoch run shared by the tests of this module."""
    tmp = tmp_path_factory.mktemp("run")
    cfg = tmp / "run.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(pairs_root)))
    out = tmp / "runs" / "x"
    res = CliRunner().invoke(cli, ["train", "--config", str(cfg), "--set", "train.lr=5e-4", "--output", str(out)])
    assert res.exit_code == 0, res.output
    return cfg, out


def test_train_writes_config_metrics_and_weights(trained):
    _cfg, out = trained
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["lr"] == 5e-4
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
    assert "loss.logit_scale" in rows[0]
    record = read_record(out / "model.safetensors")
    assert record["encoder"]["model"] == "convnext_atto" and record["embedding_dim"] == 320
    assert record["query_size"] == [32, 128] and record["reference_size"] == [32, 32]
    assert len(record["mean"]) == 3 and record["versions"]["geokit"]
    assert record["config"]["train"]["lr"] == 5e-4
    tensors = load_file(out / "model.safetensors")
    assert any(k.startswith("encoder.") for k in tensors) and "loss.logit_scale" in tensors


def test_rerunning_a_finished_run_is_a_no_op(trained):
    cfg, out = trained
    before = (out / "model.safetensors").stat().st_mtime_ns
    res = CliRunner().invoke(cli, ["train", "--config", str(cfg), "--set", "train.lr=5e-4", "--output", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "model.safetensors").stat().st_mtime_ns == before


def test_a_different_config_on_the_same_folder_is_refused(trained):
    cfg, out = trained
    res = CliRunner().invoke(cli, ["train", "--config", str(cfg), "--set", "train.lr=1e-3", "--output", str(out)])
    assert res.exit_code != 0 and "different config" in res.output


def test_evaluate_prints_table_and_writes_metrics_and_embeddings(trained, tmp_path):
    cfg, out = trained
    m, e = tmp_path / "m.json", tmp_path / "e.safetensors"
    res = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "--config",
            str(cfg),
            "--checkpoint",
            str(out / "model.safetensors"),
            "--output",
            str(m),
            "--save-embeddings",
            str(e),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "R@1" in res.output and "R@1%" in res.output
    metrics = json.loads(m.read_text())
    assert {"R@1", "R@5", "R@10", "R@1%", "queries", "references"} <= set(metrics)
    assert metrics["queries"] == 24 and metrics["references"] == 24
    emb = load_file(e)
    assert emb["query"].shape == (24, 320) and emb["reference"].shape == (24, 320)
    assert str(emb["query"].dtype) == "torch.float32" and str(emb["query_labels"].dtype) == "torch.int64"
    # A reference matches a query exactly when their labels are equal.
    assert set(emb["query_labels"].tolist()) <= set(emb["reference_labels"].tolist())
    # The learnable task is learnt a little in two epochs: better than chance (1/24).
    assert metrics["R@10"] > 100 * 10 / 24


def test_python_dash_m_geokit_evaluates_a_random_init_encoder(trained, tmp_path):
    cfg, _ = trained
    env = {**os.environ, "GEOKIT_PROGRESS": "0"}
    out = subprocess.run(
        [sys.executable, "-m", "geokit", "evaluate", "--config", str(cfg), "--output", str(tmp_path / "m.json")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "m.json").read_text())["queries"] == 24


def test_a_conflicting_encoder_is_one_sentence_naming_both_values(trained, tmp_path):
    cfg, out = trained
    res = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "--config",
            str(cfg),
            "--set",
            "encoder.model=convnext_femto",
            "--checkpoint",
            str(out / "model.safetensors"),
        ],
    )
    assert res.exit_code != 0
    assert "encoder.model is convnext_femto" in res.output and "convnext_atto" in res.output, res.output
    assert "keys" not in res.output and len(res.output) < 600  # not a dump of state-dict keys
    res = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "--config",
            str(cfg),
            "--set",
            "encoder.name=nope",
            "--checkpoint",
            str(out / "model.safetensors"),
        ],
    )
    assert res.exit_code != 0 and "nope" in res.output


def test_evaluate_a_checkpoint_with_only_a_dataset_section(trained, tmp_path, caplog):
    cfg, out = trained
    ckpt = str(out / "model.safetensors")
    ref = CliRunner().invoke(
        cli, ["evaluate", "--config", str(cfg), "--checkpoint", ckpt, "--output", str(tmp_path / "ref.json")]
    )
    assert ref.exit_code == 0, ref.output
    # no encoder, loss or sampler; no sizes either: the record supplies the encoder and [32, 128] / [32, 32]
    data = yaml.safe_load(cfg.read_text())
    ds = {k: v for k, v in data["dataset"].items() if k not in ("query_size", "reference_size")}
    small = tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump({"seed": data["seed"], "dataset": ds, "eval": data["eval"]}))
    res = CliRunner().invoke(
        cli, ["evaluate", "--config", str(small), "--checkpoint", ckpt, "--output", str(tmp_path / "m.json")]
    )
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "m.json").read_text()) == json.loads((tmp_path / "ref.json").read_text())
    assert "trained at" not in res.output + caplog.text
    # sizes stated and different from the record: used, with a warning naming both
    res = CliRunner().invoke(
        cli, ["evaluate", "--config", str(small), "--checkpoint", ckpt, "--set", "dataset.query_size=[32,96]"]
    )
    assert res.exit_code == 0, res.output
    said = res.output + caplog.text
    assert "query_size [32, 96]" in said and "trained at [32, 128]" in said, said
    # without a checkpoint an encoder section is needed (and loss/sampler still are not)
    res = CliRunner().invoke(cli, ["evaluate", "--config", str(small)])
    assert res.exit_code != 0 and "missing config section 'encoder'" in res.output
    res = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "--config",
            str(small),
            "--set",
            "encoder.name=convnext",
            "--set",
            "encoder.model=convnext_atto",
            "--set",
            "encoder.pretrained=false",
        ],
    )
    assert res.exit_code == 0, res.output
    # train still needs all four sections
    res = CliRunner().invoke(cli, ["train", "--config", str(small), "--output", str(tmp_path / "t")])
    assert res.exit_code != 0 and "missing config section" in res.output
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    res = CliRunner().invoke(cli, ["evaluate", "--config", str(cfg), "--checkpoint", str(bad)])
    assert res.exit_code != 0 and "not a readable safetensors file" in res.output


def test_a_checkpoint_replaces_pretrained_weights_so_nothing_is_downloaded(trained, tmp_path):
    # The paper's recipes say pretrained: true; evaluating a checkpoint with them must not reach
    # for the hub (HF_HUB_OFFLINE=1 here would make a download attempt fail).
    cfg, out = trained
    res = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "--config",
            str(cfg),
            "--set",
            "encoder.pretrained=true",
            "--checkpoint",
            str(out / "model.safetensors"),
        ],
    )
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["evaluate", "--config", str(cfg), "--set", "encoder.pretrained=true"])
    assert res.exit_code != 0 and "could not load pretrained weights" in res.output
