"""Contract v2: per-pair data reaches the loss, views reach encoders, match tables, transforms,
metric and re-ranker components, step-level samplers; v1 plugins and checkpoints unchanged."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from geokit.config import resolve
from geokit.data import EvalSet, MatchTable
from geokit.testing import make_pairs_dataset, tiny_config


@pytest.fixture(autouse=True)
def _keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _with_column(root: Path, name: str, values) -> Path:
    """Add a numeric column to train.csv."""
    path = root / "train.csv"
    with path.open() as fh:
        rows = list(csv.reader(fh))
    rows[0].append(name)
    for row, v in zip(rows[1:], values):
        row.append(str(v))
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return root


def _train(cfg: dict, out: Path):
    from geokit.engine import train

    return train(resolve(cfg), out)


# ------------------------------------------------------------------ per-pair data to the loss


def test_pairs_extra_numeric_columns_become_per_pair_columns(tmp_path):
    from geokit.registry import create

    root = make_pairs_dataset(tmp_path / "d", n_train=10, n_test=4)
    _with_column(root, "weight", [0.5 * i for i in range(10)])
    path = root / "train.csv"
    with path.open() as fh:
        rows = list(csv.reader(fh))
    rows[0].append("note")
    for i, row in enumerate(rows[1:]):
        row.append("text" if i == 3 else "1")
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    ds = create("dataset", "pairs", {"root": str(root)})
    tr = ds.train_set()
    assert set(tr.columns) == {"weight"}  # 'note' has a non-number: not per-pair data
    np.testing.assert_array_equal(tr.columns["weight"], 0.5 * np.arange(10))


@pytest.mark.slow
def test_weighted_run_with_unit_weights_gives_the_unweighted_losses(tmp_path):
    root = _with_column(make_pairs_dataset(tmp_path / "d", n_train=24, n_test=8), "weight", [1.0] * 24)
    base = tiny_config(root, train={"epochs": 2, "threads": 1})
    a = _train(base, tmp_path / "a").history
    b = _train(
        tiny_config(root, loss={"weight_column": "weight"}, train={"epochs": 2, "threads": 1}), tmp_path / "b"
    ).history
    assert [r["loss"] for r in a] == [r["loss"] for r in b]


def test_weighted_infonce_is_the_weighted_mean_of_pair_losses():
    from geokit.registry import create

    unweighted = create("loss", "infonce", {"label_smoothing": 0.1})
    weighted = create("loss", "infonce", {"weight_column": "w"})
    g = torch.Generator().manual_seed(0)
    q, r = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    w = torch.tensor([1.0, 0.0, 2.0, 0.5, 0.5], dtype=torch.float64)
    # by hand: the symmetric per-pair loss, then the weighted mean
    logits = (
        unweighted.logit_scale.exp()
        * torch.nn.functional.normalize(q, dim=-1)
        @ torch.nn.functional.normalize(r, dim=-1).t()
    )
    t = torch.arange(5)
    ce = torch.nn.functional.cross_entropy
    pair = 0.5 * (
        ce(logits, t, label_smoothing=0.1, reduction="none") + ce(logits.t(), t, label_smoothing=0.1, reduction="none")
    )
    want = (w.float() * pair).sum() / w.float().sum()
    got = weighted(q, r, columns={"w": w})
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(got, unweighted(q, r))  # the weights matter
    equal = weighted(q, r, columns={"w": torch.full((5,), 3.0)})
    assert torch.equal(equal, unweighted(q, r))  # equal weights: exactly the unweighted loss


def test_missing_weight_column_is_one_clear_error():
    from geokit.errors import GeokitError
    from geokit.registry import create

    loss = create("loss", "infonce", {"weight_column": "iou"})
    with pytest.raises(GeokitError, match="no per-pair column 'iou'.*columns: w"):
        loss(torch.randn(3, 4), torch.randn(3, 4), columns={"w": torch.ones(3)})


class _Recorder:
    """A loss plugin that records the per-pair data it receives."""

    seen: list = []

    @staticmethod
    def build(options, context):
        class Loss(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.scale = torch.nn.Parameter(torch.tensor(10.0))
                self.dim, self.classes = context.embedding_dim, context.num_classes

            def forward(self, query, reference, indices, references, columns, conflicts):
                _Recorder.seen.append((indices.tolist(), references.tolist(), columns["tag"].tolist(), conflicts))
                q = torch.nn.functional.normalize(query, dim=-1)
                r = torch.nn.functional.normalize(reference, dim=-1)
                return torch.nn.functional.cross_entropy(self.scale * q @ r.t(), torch.arange(len(q)))

        return Loss()


@pytest.fixture
def recorder_plugin(fresh_plugins):
    import geokit
    from geokit._plugin_manager import PluginInfo, get_manager

    class Plugin:
        @geokit.hookimpl
        def geokit_register_losses(self, registry):
            registry.add("recorder", _Recorder.build)

    get_manager().add_plugin(Plugin(), PluginInfo("recorder", "tests", None, False))
    _Recorder.seen = []
    yield _Recorder


@pytest.mark.parametrize("workers", [0, 2])
def test_loss_receives_the_batch_pairs_data_with_and_without_workers(tmp_path, recorder_plugin, workers):
    root = make_pairs_dataset(tmp_path / "d", n_train=16, n_test=4)
    _with_column(root, "tag", [100 + i for i in range(16)])
    cfg = tiny_config(root, loss={"name": "recorder"}, train={"epochs": 1, "workers": workers, "threads": 1})
    _train(cfg, tmp_path / "run")
    from geokit.registry import create

    tr = create("dataset", "pairs", {"root": str(root)}).train_set()
    assert len(recorder_plugin.seen) == 2  # 16 pairs, batches of 8
    for indices, refs, tags, conflicts in recorder_plugin.seen:
        assert refs == tr.pair_reference[indices].tolist()
        assert tags == [100.0 + i for i in indices]
        assert conflicts is None
    assert sorted(i for s in recorder_plugin.seen for i in s[0]) == list(range(16))


# ------------------------------------------------------------------ views and build context


class _TwoBranch:
    @staticmethod
    def build(options, context):
        class Enc(torch.nn.Module):
            embedding_dim = 8
            mean = {"query": (0.5, 0.5, 0.5), "reference": (0.4, 0.4, 0.4)}
            std = (0.25, 0.25, 0.25)

            def __init__(self):
                super().__init__()
                self.sizes = (context.query_size, context.reference_size)
                self.branch = torch.nn.ModuleDict(
                    {
                        v: torch.nn.Sequential(
                            torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
                        )
                        for v in ("query", "reference")
                    }
                )
                self.calls = []

            def forward(self, images, view):
                self.calls.append((view, tuple(images.shape[-2:])))
                return self.branch[view](images)

        return Enc()


@pytest.fixture
def two_branch_plugin(fresh_plugins):
    import geokit
    from geokit._plugin_manager import PluginInfo, get_manager

    class Plugin:
        @geokit.hookimpl
        def geokit_register_encoders(self, registry):
            registry.add("twobranch", _TwoBranch.build)

    get_manager().add_plugin(Plugin(), PluginInfo("twobranch", "tests", None, False))


def test_view_reaches_the_encoder_on_every_path(tmp_path, two_branch_plugin):
    from geokit.testing import check_encoder

    check_encoder("twobranch")
    root = make_pairs_dataset(tmp_path / "d", n_train=16, n_test=6)
    cfg = tiny_config(root, sampler={"name": "dss", "every": 1}, train={"epochs": 2, "eval_every": 1, "threads": 1})
    cfg["encoder"] = {"name": "twobranch"}
    res = _train(cfg, tmp_path / "run")
    enc = res.parts.encoder
    assert enc.sizes == ((32, 128), (32, 32))  # the build context's per-view sizes
    # every call: queries at the query size through the query branch, references likewise
    assert {c for c in enc.calls} == {("query", (32, 128)), ("reference", (32, 32))}
    rec = json.loads(json.dumps(res.parts.record()))
    assert rec["mean"] == {"query": [0.5] * 3, "reference": [0.4] * 3}

    # index build embeds references through the reference branch, locate photos through the query one
    from geokit.index import IndexSpec, References, build_from_checkpoint
    from geokit.retrieval.locate import Localizer

    es = res.parts.dataset.eval_set()
    refs = References(list(es.reference_paths), np.asarray(es.reference_gps), str(root / "test.csv"))
    build_from_checkpoint(tmp_path / "run" / "model.safetensors", refs, tmp_path / "x.index", IndexSpec(), show=False)
    loc = Localizer(tmp_path / "x.index", tmp_path / "run" / "model.safetensors")
    loc.encoder.module.calls.clear()
    loc.locate(list(es.query_paths[:2]), k=2)
    assert loc.encoder.module.calls == [("query", (32, 128))]


def test_per_view_normalisation_is_applied(tmp_path, two_branch_plugin):
    from geokit.config import resolve
    from geokit.engine.evaluation import embed_view
    from geokit.model import build

    root = make_pairs_dataset(tmp_path / "d", n_train=8, n_test=4)
    cfg = tiny_config(root)
    cfg["encoder"] = {"name": "twobranch"}
    parts = build(resolve(cfg))
    seen = {}
    parts.encoder.forward = lambda images, view: (
        seen.setdefault(view, images.mean().item()) * 0 + torch.zeros(len(images), 8)
    )
    es = parts.dataset.eval_set()
    for view in ("query", "reference"):
        embed_view(parts, es, view, batch_size=64, device=torch.device("cpu"), show=False)
    # the same kind of pixels, normalised with mean .5 (query) vs .4 (reference)
    assert seen["reference"] > seen["query"]


# ------------------------------------------------------------------ match tables, GPS metrics


def test_match_table_gives_the_label_protocols_metrics():
    from geokit.engine.evaluation import protocol_metrics

    rng = np.random.default_rng(0)
    q = rng.normal(size=(20, 8)).astype(np.float32)
    r = rng.normal(size=(30, 8)).astype(np.float32)
    labels_q, labels_r = np.arange(20) % 10, np.arange(30) % 10
    by_label = EvalSet([""] * 20, [""] * 30, labels_q, labels_r, multi_positive=True)
    pairs = [(i, j) for i in range(20) for j in range(30) if labels_q[i] == labels_r[j]]
    table = MatchTable([p[0] for p in pairs], [p[1] for p in pairs], weight=np.full(len(pairs), 0.5))
    by_table = EvalSet([""] * 20, [""] * 30, np.zeros(20), np.ones(30), multi_positive=True, matches=table)
    assert protocol_metrics(by_label, q, r) == protocol_metrics(by_table, q, r)


def test_metre_metrics_equal_a_computation_from_the_saved_embeddings(tmp_path):
    from geokit.config import resolve
    from geokit.engine.evaluation import evaluate, metrics_from_embeddings, read_embeddings
    from geokit.geo import haversine_m

    root = make_pairs_dataset(tmp_path / "d", n_train=8, n_test=12)
    res = evaluate(resolve(tiny_config(root)), save_embeddings=tmp_path / "emb.safetensors", show=False)
    m = res.metrics
    assert {"median_error_m", "within_25m", "within_50m", "within_100m"} <= set(m)
    es, q, r = read_embeddings(tmp_path / "emb.safetensors")
    top1 = np.argmax(q @ r.T, axis=1)
    err = haversine_m(es.query_gps[:, 0], es.query_gps[:, 1], es.reference_gps[top1, 0], es.reference_gps[top1, 1])
    assert m["median_error_m"] == pytest.approx(float(np.median(err)), abs=1e-6)
    for d in (25, 50, 100):
        assert m[f"within_{d}m"] == pytest.approx(100 * np.mean(err <= d))
    again = metrics_from_embeddings(tmp_path / "emb.safetensors")
    assert again == m


def test_no_metre_metrics_without_gps(tmp_path):
    from geokit.config import resolve
    from geokit.engine.evaluation import evaluate

    root = make_pairs_dataset(tmp_path / "d", n_train=8, n_test=6, gps=False)
    assert "median_error_m" not in evaluate(resolve(tiny_config(root)), show=False).metrics


def test_save_embeddings_with_shared_label_array_and_match_table(tmp_path):
    from geokit.engine.evaluation import EvalResult, metrics_from_embeddings, protocol_metrics, write_embeddings

    labels = np.arange(6)
    es = EvalSet([""] * 6, [""] * 6, labels, labels, matches=MatchTable(np.arange(6), (np.arange(6) + 1) % 6))
    rng = np.random.default_rng(1)
    q, r = rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=(6, 4)).astype(np.float32)
    write_embeddings(tmp_path / "e.safetensors", EvalResult({}, es, q, r))
    assert metrics_from_embeddings(tmp_path / "e.safetensors", metrics=[]) == protocol_metrics(es, q, r)


# ------------------------------------------------------------------ transforms


def test_limited_fov_evaluation_is_deterministic_and_training_runs(tmp_path):
    from geokit.engine.evaluation import evaluate

    root = make_pairs_dataset(tmp_path / "d", n_train=16, n_test=8)
    cfg = tiny_config(root, transforms=[{"name": "limited_fov", "fov": 90}], train={"epochs": 1, "threads": 1})
    a = evaluate(resolve(cfg), show=False)
    b = evaluate(resolve(cfg), show=False)
    np.testing.assert_array_equal(a.query, b.query)
    full = evaluate(resolve(tiny_config(root)), show=False)
    assert not np.array_equal(a.query, full.query)
    res = _train(cfg, tmp_path / "run")
    assert res.parts.context.query_size == (32, 32)  # 90° of a 128-wide panorama
    assert np.isfinite(res.history[-1]["loss"])


def test_config_lists_are_validated_and_round_trip(tmp_path):
    from geokit.errors import GeokitError

    root = make_pairs_dataset(tmp_path / "d", n_train=8, n_test=4)
    cfg = resolve(tiny_config(root, transforms=["limited_fov"], rerankers=[{"name": "qe", "n": 2}]))
    d = cfg.to_dict()
    assert d["transforms"] == [{"name": "limited_fov", "fov": 90.0, "views": ["query"]}]
    assert resolve(d).to_dict() == d
    assert "transforms" not in resolve(tiny_config(root)).to_dict()  # v1 configs compare unchanged
    with pytest.raises(GeokitError, match=r"transforms\.0\.fob.*did you mean 'fov'"):
        resolve(tiny_config(root, transforms=[{"name": "limited_fov", "fob": 90}]))


def test_reranker_changes_queries_and_runs_in_evaluation(tmp_path):
    from geokit.engine.evaluation import evaluate

    root = make_pairs_dataset(tmp_path / "d", n_train=8, n_test=10)
    plain = evaluate(resolve(tiny_config(root)), show=False)
    qe = evaluate(resolve(tiny_config(root, rerankers=[{"name": "qe", "n": 2}])), show=False)
    np.testing.assert_array_equal(plain.reference, qe.reference)
    assert not np.allclose(plain.query, qe.query)


# ------------------------------------------------------------------ step-level samplers


@pytest.mark.slow
def test_step_level_sampler_trains_and_resumes_exactly(tmp_path):
    from safetensors.torch import load_file

    from geokit.engine import TrainingInterrupted

    root = make_pairs_dataset(tmp_path / "d", n_train=32, n_test=8)
    cfg = tiny_config(
        root, sampler={"name": "inbatch", "pool": 2}, train={"epochs": 2, "checkpoint_every": 1, "threads": 1}
    )
    full = _train(cfg, tmp_path / "full")
    assert len(full.history) == 2 and full.history[0]["batches"] == 4

    # Stop after 3 steps via the stop flag (as SIGINT does), then resume.
    import geokit.engine as T

    calls = {"n": 0}
    real = T.TrainStep.step

    def stop_after_three(self, *a, **k):
        out = real(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == 3:
            import signal

            signal.raise_signal(signal.SIGINT)
        return out

    T.TrainStep.step = stop_after_three
    try:
        with pytest.raises(TrainingInterrupted):
            _train(cfg, tmp_path / "cut")
    finally:
        T.TrainStep.step = real
    _train(cfg, tmp_path / "cut")
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ v1 compatibility


def test_v1_checkpoint_loads_and_evaluates(tmp_path):
    """A checkpoint in the v1 layout (record without any v2 field) evaluates unchanged."""
    from safetensors.torch import save_file

    from geokit.config import resolve
    from geokit.engine.evaluation import evaluate
    from geokit.model import build

    root = make_pairs_dataset(tmp_path / "d", n_train=8, n_test=6)
    cfg = resolve(tiny_config(root))
    parts = build(cfg)
    record = {
        "format": 1,
        "encoder": cfg.to_dict()["encoder"],
        "loss": cfg.to_dict()["loss"],
        "dataset": "pairs",
        "embedding_dim": 320,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "query_size": [32, 128],
        "reference_size": [32, 32],
        "query_view": "ground",
        "reference_view": "aerial",
        "versions": {"geokit": "0.1.0"},
        "config": {k: v for k, v in cfg.to_dict().items()},
    }
    tensors = {f"encoder.{k}": v.contiguous() for k, v in parts.encoder.state_dict().items()}
    tensors["loss.logit_scale"] = parts.loss.state_dict()["logit_scale"]
    from geokit.checkpoint import RECORD_KEY

    save_file(tensors, str(tmp_path / "v1.safetensors"), metadata={RECORD_KEY: json.dumps(record)})
    res = evaluate(cfg, tmp_path / "v1.safetensors", show=False)
    assert res.metrics["queries"] == 6


@pytest.mark.slow
def test_classification_loss_trains_and_its_checkpoint_evaluates_from_the_cli(tmp_path):
    import subprocess
    import sys

    import yaml

    root = make_pairs_dataset(tmp_path / "d", n_train=16, n_test=6)
    cfg = tiny_config(root, loss={"name": "infonce_ce", "ce_weight": 0.5}, train={"epochs": 1, "threads": 1})
    res = _train(cfg, tmp_path / "run")
    clf = res.parts.loss.classifier
    assert (clf.in_features, clf.out_features) == (320, 16)  # embedding_dim and classes from the context
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "geokit",
            "evaluate",
            "--config",
            str(tmp_path / "cfg.yaml"),
            "--checkpoint",
            str(tmp_path / "run" / "model.safetensors"),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "R@1" in out.stdout and "Traceback" not in out.stderr


def test_run_rerankers_reach_index_build_and_locate(tmp_path):
    """A run configured with a re-ranker: evaluate uses it, index build records it, locate applies
    it to the photo's embedding against the gallery (and an approximate index is refused)."""
    from geokit.errors import GeokitError
    from geokit.index import IndexSpec, References, build_from_checkpoint
    from geokit.retrieval import search
    from geokit.retrieval.locate import Localizer

    root = make_pairs_dataset(tmp_path / "d", n_train=16, n_test=8)
    cfg = tiny_config(root, rerankers=[{"name": "qe", "n": 2, "alpha": 1.0}], train={"epochs": 1, "threads": 1})
    res = _train(cfg, tmp_path / "run")
    ckpt = tmp_path / "run" / "model.safetensors"
    es = res.parts.dataset.eval_set()
    refs = References(list(es.reference_paths), np.asarray(es.reference_gps), str(root / "test.csv"))
    ix = build_from_checkpoint(ckpt, refs, tmp_path / "x.index", IndexSpec(), show=False)
    assert ix.meta["rerankers"] == [{"name": "qe", "n": 2, "alpha": 1.0}]
    loc = Localizer(tmp_path / "x.index", ckpt)
    photos = list(es.query_paths[:3])
    got = loc.locate(photos, k=3)
    q = loc.embed(photos)
    g = ix.gallery()
    s, i = search(q, g, 2)
    expanded = q + np.einsum("qn,qnd->qd", np.clip(s, 0, None), g[i])
    _, want = search(expanded / np.linalg.norm(expanded, axis=1, keepdims=True), g, 3)
    assert [[c.index for c in r.candidates] for r in got] == want.tolist()
    with pytest.raises(GeokitError, match="re-rankers.*--type flat"):
        build_from_checkpoint(ckpt, refs, tmp_path / "y.index", IndexSpec(type="hnsw"), show=False)
