"""The engine's typed pieces: resume-free config keys declared on the fields, the resume state's
on-disk layout, the epoch statistics and their metrics.jsonl row."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geokit.config import TrainConfig, resolve
from geokit.engine import (
    RESUME_FREE,
    STATE_FORMAT,
    EpochRow,
    EpochStats,
    ResumeState,
    config_differences,
    resume_free_keys,
)
from geokit.errors import GeokitError
from geokit.testing import make_pairs_dataset, tiny_config

# The keys that may change on resume, as they were hand-kept in geokit/training.py before the
# fields declared them (json_schema_extra=RESUME_FREE_FIELD).
HAND_KEPT = {
    ("train", "workers"),
    ("train", "device"),
    ("train", "threads"),
    ("train", "log_every"),
    ("train", "checkpoint_every"),
    ("train", "grad_cache_chunk"),
    ("train", "bad_images"),
    ("train", "dist_timeout"),
    ("train", "eval_every"),
    ("train", "channels_last"),
    ("eval", "batch_size"),
    ("eval", "chunk_size"),
    ("eval", "split"),
}


def test_the_resume_free_keys_are_those_the_fields_declare():
    assert resume_free_keys() == HAND_KEPT
    assert RESUME_FREE == HAND_KEPT


def test_a_fields_marker_decides_whether_it_may_change_on_resume(monkeypatch):
    from pydantic import BaseModel, Field

    from geokit.config import RESUME_FREE_FIELD

    class Inner(BaseModel):
        free: int = Field(1, json_schema_extra=RESUME_FREE_FIELD)
        fixed: int = 2

    class Outer(BaseModel):
        top: int = Field(0, json_schema_extra=RESUME_FREE_FIELD)
        section: Inner = Inner()
        maybe: Inner | None = None

    assert resume_free_keys(Outer) == {("top",), ("section", "free"), ("maybe", "free")}
    # Unmarking a field makes it a key that must not change.
    monkeypatch.setattr(TrainConfig.model_fields["workers"], "json_schema_extra", None)
    assert resume_free_keys() == HAND_KEPT - {("train", "workers")}


def test_config_differences_ignore_the_free_keys_only():
    old = {"seed": 0, "train": {"lr": 0.001, "workers": 0, "log_every": 20}, "eval": {"split": None}}
    new = {"seed": 0, "train": {"lr": 0.001, "workers": 4, "log_every": 1}, "eval": {"split": "val"}}
    assert config_differences(old, new) == []
    assert config_differences(old, {**new, "train": {**new["train"], "lr": 0.0005}}) == ["train.lr: 0.001 -> 0.0005"]


@pytest.mark.slow
def test_resuming_with_a_changed_free_key_works_and_a_changed_fixed_key_is_refused(tmp_path):
    from geokit.training import train

    root = make_pairs_dataset(tmp_path / "d", n_train=16, n_test=4)
    threads = torch.get_num_threads()
    try:
        first = train(resolve(tiny_config(root, train={"epochs": 1})), tmp_path / "run", show=False)
        assert first.epochs_run == 1
        # train.log_every is free: the run is extended by one epoch, not refused
        more = train(resolve(tiny_config(root, train={"epochs": 2, "log_every": 1})), tmp_path / "run", show=False)
        assert more.epochs_run == 1 and [r["epoch"] for r in more.history] == [1, 2]
        with pytest.raises(GeokitError, match=r"different config .*train\.lr: 0\.001 -> 0\.0005"):
            train(resolve(tiny_config(root, train={"epochs": 3, "lr": 5e-4})), tmp_path / "run", show=False)
    finally:
        torch.set_num_threads(threads)


def _state(**kw):
    values = dict(
        epoch=3,
        epoch_done=False,
        batches_done=1,
        step=9,
        batches=[np.array([4, 1, 2]), np.array([0, 3])],
        stats=EpochStats(loss_sum=1.5, steps=1, images=6, seconds=0.25, skipped=0),
        encoder={"w": torch.ones(2)},
        loss={"logit_scale": torch.tensor(2.0)},
        optimizer={"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]},
        scaler={},
        sampler={"order": [1, 2]},
        torch_rng=torch.get_rng_state(),
        numpy_rng=list(np.random.get_state()),
        python_rng=__import__("random").getstate(),
    )
    return ResumeState(**{**values, **kw})


def test_the_resume_state_keeps_its_on_disk_layout(tmp_path):
    from geokit.checkpoint import load_state

    _state().save(tmp_path / "state.safetensors")
    raw = load_state(tmp_path / "state.safetensors")
    assert list(raw) == [
        "format",
        "epoch",
        "epoch_done",
        "batches_done",
        "step",
        "epoch_batches",
        "epoch_batch_sizes",
        "epoch_stats",
        "encoder",
        "loss",
        "optimizer",
        "scaler",
        "sampler",
        "torch_rng",
        "numpy_rng",
        "python_rng",
    ]
    assert raw["format"] == STATE_FORMAT == 2
    assert raw["epoch_batches"].tolist() == [4, 1, 2, 0, 3] and raw["epoch_batch_sizes"].tolist() == [3, 2]
    assert raw["epoch_stats"] == {"loss_sum": 1.5, "steps": 1, "images": 6, "seconds": 0.25, "skipped": 0}
    back = ResumeState.load(tmp_path / "state.safetensors")
    assert [b.tolist() for b in back.batches] == [[4, 1, 2], [0, 3]]
    assert (back.epoch, back.epoch_done, back.batches_done, back.step) == (3, False, 1, 9)
    assert back.stats == EpochStats(loss_sum=1.5, steps=1, images=6, seconds=0.25, skipped=0)
    assert back.next_epoch == 3 and back.where() == "in epoch 3 after batch 1"
    assert _state(epoch_done=True).next_epoch == 4


def test_a_state_saved_with_float_totals_or_another_format_loads_or_is_refused(tmp_path):
    from geokit.checkpoint import load_state, save_state

    path = tmp_path / "state.safetensors"
    _state().save(path)
    raw = load_state(path)
    # runs resumed before the stats were typed saved every total as a float
    raw["epoch_stats"] = {"loss_sum": 1.5, "steps": 1.0, "images": 6.0, "seconds": 0.25, "skipped": 0.0}
    save_state(path, raw)
    assert ResumeState.load(path).stats == EpochStats(1.5, 1, 6, 0.25, 0)
    save_state(path, {**raw, "format": 1})
    with pytest.raises(GeokitError, match="written by another geokit version"):
        ResumeState.load(path)
    save_state(path, {k: v for k, v in raw.items() if k != "epoch_stats"})
    with pytest.raises(GeokitError, match="does not fit this run"):
        ResumeState.load(path)


def test_an_epoch_row_has_the_metrics_jsonl_keys_in_order():
    row = EpochRow(epoch=2, step=8, loss=0.5, lr=1e-3, batches=4, seconds=1.25, images_per_s=51.2)
    assert list(row.as_row()) == ["epoch", "step", "loss", "lr", "batches", "seconds", "images_per_s"]
    row.skipped_pairs, row.loss_params, row.evaluation = 3, {"logit_scale": 14.2}, {"R@1": 50.0}
    assert row.as_row() == {
        "epoch": 2,
        "step": 8,
        "loss": 0.5,
        "lr": 1e-3,
        "batches": 4,
        "seconds": 1.25,
        "images_per_s": 51.2,
        "skipped_pairs": 3,
        "loss.logit_scale": 14.2,
        "eval/R@1": 50.0,
    }
    stats = EpochStats()
    stats.add_step(0.5, 8)
    stats.add_step(1.0, 7)
    assert stats == EpochStats(loss_sum=1.5, steps=2, images=30, seconds=0.0, skipped=0)
