"""Sample4Geo's released checkpoints, as they are, through `encoder.weights` and `geokit import-weights`.

The released files are `torch.save(model.state_dict())` of a module holding the timm network as
`model` and the temperature as `logit_scale` (saved under DataParallel's `module.` when trained on
several GPUs). The tests write such files from a timm convnext_atto and check that geokit embeds
exactly what the timm network embeds, that the temperature reaches the loss, and that the
imported checkpoint holds the same bits and evaluates to the same metrics.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from geokit import config as config_mod
from geokit.checkpoint import read_record
from geokit.errors import GeokitError
from geokit.testing import tiny_config

LOGIT_SCALE = 3.25  # not the default log(1/0.07) = 2.659, so a hand-over is visible


def _timm_state(num_classes: int = 0, seed: int = 1) -> dict[str, torch.Tensor]:
    import timm

    torch.manual_seed(seed)
    model = timm.create_model("convnext_atto", pretrained=False, num_classes=num_classes)
    with torch.no_grad():  # make the norms' affine parameters non-trivial too
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def timm_state() -> dict[str, torch.Tensor]:
    return _timm_state()


def _write_released(path: Path, state: dict[str, torch.Tensor], *, module: bool = False) -> Path:
    saved = {f"model.{k}": v for k, v in state.items()}
    saved["logit_scale"] = torch.tensor(LOGIT_SCALE)
    if module:
        saved = {f"module.{k}": v for k, v in saved.items()}
    torch.save(saved, path)
    return path


@pytest.fixture(scope="module")
def released(tmp_path_factory, timm_state) -> Path:
    return _write_released(tmp_path_factory.mktemp("released") / "cvusa.pth", timm_state)


def _config(root: Path, **encoder) -> config_mod.Config:
    cfg = tiny_config(root, encoder={"name": "convnext", "model": "convnext_atto", "pretrained": False, **encoder})
    return config_mod.resolve(cfg)


def _timm_embeddings(state: dict[str, torch.Tensor], parts, es) -> tuple[np.ndarray, np.ndarray]:
    """The protocol's embeddings computed with the bare timm network holding ``state``."""
    import timm

    from geokit.data import Normalisation
    from geokit.embedding import embed_paths

    model = timm.create_model("convnext_atto", pretrained=False, num_classes=0)
    model.load_state_dict(state)
    model.embedding_dim = model.num_features
    cfg = timm.data.resolve_model_data_config(model)
    norm = Normalisation(tuple(cfg["mean"]), tuple(cfg["std"]))
    ds = parts.dataset
    q = embed_paths(model, ds, es.query_paths, ds.query_size, norm, batch_size=16)
    r = embed_paths(model, ds, es.reference_paths, ds.reference_size, norm, batch_size=16)
    return q, r


@pytest.mark.parametrize("module", [False, True], ids=["model.", "module.model."])
def test_encoder_weights_loads_released_layout_and_embeds_like_timm(tmp_path, pairs_root, timm_state, module):
    from geokit.engine.evaluation import evaluate
    from geokit.model import build

    path = _write_released(tmp_path / "released.pth", timm_state, module=module)
    cfg = _config(pairs_root, weights=str(path))
    res = evaluate(cfg)
    parts = build(cfg)
    for k, v in timm_state.items():
        assert torch.equal(parts.encoder.model.state_dict()[k], v), k
    q, r = _timm_embeddings(timm_state, parts, res.eval_set)
    np.testing.assert_allclose(res.query, q, atol=1e-6)
    np.testing.assert_allclose(res.reference, r, atol=1e-6)


def test_logit_scale_reaches_the_loss(pairs_root, released, caplog):
    from geokit.model import build

    with caplog.at_level(logging.INFO, logger="geokit"):
        parts = build(_config(pairs_root, weights=str(released)))
    assert parts.loss.logit_scale.item() == LOGIT_SCALE
    assert parts.loss.logit_scale.requires_grad  # still learnable: fine-tuning optimises it
    assert any("logit_scale=3.25" in r.getMessage() for r in caplog.records)
    # a fixed temperature (a buffer) takes it too
    cfg = tiny_config(
        pairs_root, encoder={"weights": str(released)}, loss={"name": "infonce", "learnable_temperature": False}
    )
    assert build(config_mod.resolve(cfg)).loss.logit_scale.item() == LOGIT_SCALE
    # without a weights file the loss starts as configured
    assert build(_config(pairs_root)).loss.logit_scale.item() == pytest.approx(np.log(1 / 0.07))


def test_tensors_the_loss_cannot_place_give_one_warning(tmp_path, pairs_root, timm_state, caplog):
    from geokit.model import build

    path = _write_released(tmp_path / "r.pth", timm_state)
    saved = torch.load(path, weights_only=True)
    saved["margin"] = torch.tensor(0.3)
    saved["logit_scale"] = torch.ones(2)  # another shape: not placed
    torch.save(saved, path)
    with caplog.at_level(logging.INFO, logger="geokit"):
        parts = build(_config(pairs_root, weights=str(path)))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "logit_scale, margin" in warnings[0], warnings
    assert parts.loss.logit_scale.item() == pytest.approx(np.log(1 / 0.07))


def _import(source: Path, root: Path, out: Path, *extra: str) -> object:
    from geokit.cli import _load_plugin_commands, cli

    if "import-weights" not in cli.commands:
        _load_plugin_commands()
    cfg = out.parent / "run.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(root)))
    return CliRunner().invoke(cli, ["import-weights", str(source), "--config", str(cfg), "--output", str(out), *extra])


@pytest.mark.slow
@pytest.mark.parametrize("module", [False, True], ids=["model.", "module.model."])
def test_import_weights_is_bit_identical_and_evaluates_like_encoder_weights(tmp_path, pairs_root, timm_state, module):
    from geokit.engine.evaluation import evaluate
    from geokit.retrieval.locate import Localizer

    src = _write_released(tmp_path / "released.pth", timm_state, module=module)
    out = tmp_path / "imported.safetensors"
    res = _import(src, pairs_root, out)
    assert res.exit_code == 0, res.output
    assert "logit_scale" in res.output
    tensors = load_file(out)
    assert set(tensors) == {f"encoder.model.{k}" for k in timm_state} | {"loss.logit_scale"}
    for k, v in timm_state.items():
        got = tensors[f"encoder.model.{k}"]
        assert got.dtype == v.dtype and torch.equal(got, v), k
    assert tensors["loss.logit_scale"].item() == LOGIT_SCALE
    record = read_record(out)
    assert record["embedding_dim"] == 320 and record["query_size"] == [32, 128]
    assert record["reference_size"] == [32, 32] and len(record["mean"]) == 3
    assert record["encoder"]["model"] == "convnext_atto" and record["imported_from"]["file"] == "released.pth"
    assert len(record["imported_from"]["sha256"]) == 64

    from geokit.cli import cli

    cfg_file = tmp_path / "run.yaml"  # written by _import
    run = CliRunner().invoke(
        cli, ["evaluate", "--config", str(cfg_file), "--checkpoint", str(out), "--output", str(tmp_path / "m.json")]
    )
    assert run.exit_code == 0, run.output
    via_weights = evaluate(_config(pairs_root, weights=str(src)))
    assert json.loads((tmp_path / "m.json").read_text()) == via_weights.metrics
    via_checkpoint = evaluate(_config(pairs_root), out)
    np.testing.assert_array_equal(via_checkpoint.query, via_weights.query)
    np.testing.assert_array_equal(via_checkpoint.reference, via_weights.reference)
    if module:
        return
    # index build and locate rebuild the encoder from the record alone
    run = CliRunner().invoke(
        cli,
        [
            "index",
            "build",
            "--checkpoint",
            str(out),
            "--config",
            str(cfg_file),
            "--output",
            str(tmp_path / "tiles.index"),
        ],
    )
    assert run.exit_code == 0, run.output
    loc = Localizer(tmp_path / "tiles.index", out, view="query", device="cpu")
    np.testing.assert_allclose(loc.index.vectors, via_weights.reference, atol=1e-5)
    es = via_weights.eval_set
    np.testing.assert_allclose(loc.embed(es.query_paths[:4]), via_weights.query[:4], atol=1e-5)
    assert loc.locate(es.query_paths[:1], k=3)[0].candidates


def test_import_refuses_an_existing_output_unless_forced(tmp_path, pairs_root, released):
    out = tmp_path / "imported.safetensors"
    out.write_bytes(b"keep me")
    res = _import(released, pairs_root, out)
    assert res.exit_code != 0 and "exists" in res.output and "--force" in res.output
    assert out.read_bytes() == b"keep me"
    res = _import(released, pairs_root, out, "--force")
    assert res.exit_code == 0, res.output
    assert read_record(out)["embedding_dim"] == 320


def test_import_of_a_plain_timm_state_dict_drops_only_the_classifier(tmp_path, pairs_root):
    state = _timm_state(num_classes=7)
    src = tmp_path / "timm.pth"
    torch.save(state, src)
    out = tmp_path / "imported.safetensors"
    res = _import(src, pairs_root, out)
    assert res.exit_code == 0, res.output
    assert "head.fc.bias, head.fc.weight" in res.output
    assert "none (the loss starts as configured)" in res.output
    tensors = load_file(out)
    assert set(tensors) == {f"encoder.model.{k}" for k in state if not k.startswith("head.fc.")} | {"loss.logit_scale"}
    assert all(torch.equal(tensors[f"encoder.model.{k}"], state[k]) for k in state if not k.startswith("head.fc."))


def test_a_geokit_checkpoint_as_initial_weights_carries_its_loss(tmp_path, pairs_root, released):
    from geokit.model import build

    out = tmp_path / "imported.safetensors"
    assert _import(released, pairs_root, out).exit_code == 0
    parts = build(_config(pairs_root, weights=str(out)))
    assert parts.loss.logit_scale.item() == LOGIT_SCALE
    tensors = load_file(out)
    assert all(torch.equal(v, tensors[f"encoder.{k}"]) for k, v in parts.encoder.state_dict().items())


class _Evil:
    """Unpickling this would create a file (a stand-in for running any code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_that_would_run_code_is_refused_unrun(tmp_path, pairs_root, timm_state):
    from geokit.cli._weights import import_weights_file
    from geokit.model import build

    marker = tmp_path / "pwned"
    src = tmp_path / "evil.pth"
    saved = {f"model.{k}": v for k, v in timm_state.items()}
    saved["logit_scale"] = _Evil(marker)
    torch.save(saved, src)
    with pytest.raises(GeokitError, match="refused .*evil.pth.*never unpickles"):
        build(_config(pairs_root, weights=str(src)))
    with pytest.raises(GeokitError, match="refused"):
        import_weights_file(src, _config(pairs_root), tmp_path / "out.safetensors")
    assert not marker.exists()
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ([torch.zeros(1)], "unknown layout: the file holds a list"),
        ({"model.a": torch.zeros(1), "epoch": 3}, r"not tensors: epoch \(int\)"),
        ({"weights": {"a": torch.zeros(1)}, "meta": {"b": 1}}, "unknown layout: a dict holding dicts"),
        ({}, "empty"),
    ],
)
def test_unreadable_layouts_are_refused_clearly(tmp_path, pairs_root, content, message):
    from geokit.cli._weights import import_weights_file

    src = tmp_path / "w.pth"
    torch.save(content, src)
    with pytest.raises(GeokitError, match=message):
        import_weights_file(src, _config(pairs_root), tmp_path / "out.safetensors")


def test_keys_that_do_not_fit_are_listed(tmp_path, pairs_root, timm_state):
    from geokit.cli._weights import import_weights_file

    state = dict(timm_state)
    del state["stem.0.weight"]
    state["extra_block.weight"] = torch.zeros(3)
    src = _write_released(tmp_path / "w.pth", state)
    with pytest.raises(GeokitError, match=r"1 missing keys: stem\.0\.weight; 1 unexpected keys: extra_block\.weight"):
        import_weights_file(src, _config(pairs_root), tmp_path / "out.safetensors")
    # another architecture: the error names the file and says what to check
    src = _write_released(tmp_path / "w2.pth", timm_state)
    cfg = _config(pairs_root, model="convnext_femto")
    with pytest.raises(GeokitError, match="keys with another shape.*w2.pth|w2.pth.*another shape"):
        import_weights_file(src, cfg, tmp_path / "out.safetensors")


def test_import_refuses_an_encoder_with_parts_the_file_lacks_and_fills_both_branches(
    tmp_path, pairs_root, released, timm_state
):
    from geokit.cli._weights import import_weights_file

    with pytest.raises(GeokitError, match="1 encoder tensors would not come unchanged.*pool.p"):
        import_weights_file(released, _config(pairs_root, pool="gem"), tmp_path / "gem.safetensors")
    assert not (tmp_path / "gem.safetensors").exists()
    out = tmp_path / "two.safetensors"
    import_weights_file(released, _config(pairs_root, shared=False), out)
    tensors = load_file(out)
    for view in ("query", "reference"):
        assert all(torch.equal(tensors[f"encoder.{view}.model.{k}"], v) for k, v in timm_state.items())
    assert read_record(out)["encoder"]["shared"] is False


def test_fine_tuning_from_a_released_file_starts_from_its_temperature(tmp_path, pairs_root, released):
    import json

    from geokit.engine import train

    cfg = tiny_config(
        pairs_root, encoder={"weights": str(released)}, train={"epochs": 1, "lr": 1e-5, "warmup_epochs": 0}
    )
    train(config_mod.resolve(cfg), tmp_path / "run")
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["loss.logit_scale"] == pytest.approx(LOGIT_SCALE, abs=0.01)  # default would be 2.659


def test_key_prefix_helpers_and_load_at_prefixes():
    # the one prefix helper the convnext plugin loads its initial weights through
    from geokit.checkpoint import add_prefix, drop_prefix, load_at_prefixes, strip_prefix

    state = {"encoder.a": 1, "encoder.b.c": 2, "loss.t": 3}
    assert strip_prefix(state, "encoder.") == {"a": 1, "b.c": 2}
    assert add_prefix(strip_prefix(state, "loss."), "loss.") == {"loss.t": 3}
    assert drop_prefix(state, "encoder.") == {"loss.t": 3}

    def branch():
        b = torch.nn.Module()
        b.model = torch.nn.Linear(2, 2)
        return b

    two = torch.nn.Module()
    two.query, two.reference = branch(), branch()
    layouts = [[""], ["query.", "reference."], ["query.model.", "reference.model."]]
    backbone = {k: torch.full_like(v, 7.0) for k, v in torch.nn.Linear(2, 2).state_dict().items()}
    load_at_prefixes(two, backbone, "x", layouts)  # the backbone's keys: into both backbones
    assert (two.query.model.weight == 7).all() and (two.reference.model.bias == 7).all()
    load_at_prefixes(two, add_prefix({k: v + 1 for k, v in backbone.items()}, "model."), "x", layouts)  # a branch
    assert (two.query.model.weight == 8).all() and (two.reference.model.weight == 8).all()
    whole = {k: torch.zeros_like(v) for k, v in two.state_dict().items()}
    whole["reference.model.bias"] = torch.ones(2)
    load_at_prefixes(two, whole, "x", layouts)  # the whole encoder: each tensor where it was
    assert (two.query.model.bias == 0).all() and (two.reference.model.bias == 1).all()
    with pytest.raises(GeokitError, match=r"weights from src do not fit the model: 1 unexpected keys: extra"):
        load_at_prefixes(two, {**backbone, "extra": torch.zeros(1)}, "src", layouts)
