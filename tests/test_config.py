"""Config files, --set overrides and their errors (every one names the key or the file line)."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from geokit import config
from geokit.cli import cli
from geokit.errors import GeokitError
from geokit.testing import tiny_config


def write(tmp_path, data, name="run.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_resolved_config_fills_component_defaults(tmp_path, pairs_root):
    cfg = config.load(write(tmp_path, tiny_config(pairs_root)), ["train.lr=5e-4", "loss.label_smoothing=0.2"])
    d = cfg.to_dict()
    assert d["train"]["lr"] == 5e-4 and d["loss"]["label_smoothing"] == 0.2
    assert d["loss"]["temperature"] == 0.07  # a default the file did not mention
    assert d["encoder"]["name"] == "convnext" and d["dataset"]["query_size"] == [32, 128]
    assert set(d) == {"seed", "encoder", "loss", "sampler", "dataset", "train", "eval"}


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.lrr=1", "unknown config key 'train.lrr' (did you mean 'lr'?)"),
        ("encoder.modle=x", "unknown config key 'encoder.modle' (did you mean 'model'?)"),
        ("dataset.query_size=[1]", "config key 'dataset.query_size"),
        ("train.epochs=0", "config key 'train.epochs'"),
        ("train.lr=fast", "config key 'train.lr'"),
        ("sampler.name=randon", "unknown sampler 'randon' (did you mean 'random'?)"),
        ("bogus=1", "unknown config key 'bogus'"),
    ],
)
def test_bad_keys_and_values_name_the_full_key(tmp_path, pairs_root, override, expected):
    with pytest.raises(GeokitError) as err:
        config.load(write(tmp_path, tiny_config(pairs_root)), [override])
    assert expected in str(err.value)


def test_set_values_parse_as_yaml_scalars_and_create_sections():
    data = config.apply_overrides(
        {"train": {"lr": 1}}, ["train.lr=1e-4", "train.amp=true", "eval.split=val", "a.b.c=[1, 2]", "x=null"]
    )
    assert data == {"train": {"lr": 1e-4, "amp": True}, "eval": {"split": "val"}, "a": {"b": {"c": [1, 2]}}, "x": None}
    with pytest.raises(GeokitError, match="KEY=VALUE"):
        config.apply_overrides({}, ["train.lr"])
    with pytest.raises(GeokitError, match="'train.lr' is not a section"):
        config.apply_overrides({"train": {"lr": 1}}, ["train.lr.x=1"])


def test_yaml_errors_name_file_and_line(tmp_path):
    path = write(tmp_path, "seed: 1\nencoder:\n  name: convnext\n  model: [unclosed\n")
    with pytest.raises(GeokitError, match=r"invalid YAML in .*run.yaml, line \d+"):
        config.load(path)
    with pytest.raises(GeokitError, match="config file not found"):
        config.load(tmp_path / "nope.yaml")
    with pytest.raises(GeokitError, match="missing config section 'dataset'"):
        config.load(write(tmp_path, {"encoder": {"name": "convnext"}, "loss": "infonce", "sampler": "random"}))


def test_json_config_works(tmp_path, pairs_root):
    import json

    path = tmp_path / "run.json"
    path.write_text(json.dumps(tiny_config(pairs_root)))
    assert config.load(path).names["dataset"] == "pairs"


def test_config_show_prints_the_resolved_config(tmp_path, pairs_root):
    path = write(tmp_path, tiny_config(pairs_root))
    out = CliRunner().invoke(cli, ["config", "show", "--config", str(path), "--set", "train.lr=5e-4"])
    assert out.exit_code == 0, out.output
    shown = yaml.safe_load(out.output)
    assert shown["train"]["lr"] == 5e-4 and shown["loss"]["name"] == "infonce"


def test_cli_errors_are_one_paragraph_without_traceback(tmp_path, pairs_root):
    path = write(tmp_path, tiny_config(pairs_root))
    out = CliRunner().invoke(cli, ["config", "show", "--config", str(path), "--set", "train.lrr=1"])
    assert out.exit_code != 0
    assert "Traceback" not in out.output and "unknown config key 'train.lrr'" in out.output
