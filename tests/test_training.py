"""Training engine, in-process: gradient caching, bad images, a NaN loss, failing checkpoint
writes, the schedule, periodic evaluation, optional TensorBoard."""

from __future__ import annotations

import errno
import json
import sys
import types

import numpy as np
import pytest

from geokit import GeokitError
from geokit.config import resolve
from geokit.testing import make_pairs_dataset, tiny_config


@pytest.fixture(autouse=True)
def _keep_threads():
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _train(root, out, **sections):
    from geokit.engine import train

    return train(resolve(tiny_config(root, **sections)), out, show=False)


def test_lr_schedule_warms_up_then_decays_to_zero():
    from geokit.engine import lr_at

    lrs = [lr_at(s, 100, 10, 1.0) for s in range(101)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[100] == pytest.approx(0.0, abs=1e-12)


def test_keep_freed_memory_respects_opt_outs(monkeypatch):
    import platform

    from geokit import runtime

    for env in (
        {"GEOKIT_MALLOC_TUNING": "0"},
        {"MALLOC_TRIM_THRESHOLD_": "1"},
        {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"},
    ):
        monkeypatch.setattr(runtime, "_malloc_tuned", None)
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            assert runtime.keep_freed_memory() is False, env
    monkeypatch.setattr(runtime, "_malloc_tuned", None)
    for k in (
        "GEOKIT_MALLOC_TUNING",
        "MALLOC_MMAP_THRESHOLD_",
        "MALLOC_TRIM_THRESHOLD_",
        "MALLOC_TOP_PAD_",
        "GLIBC_TUNABLES",
    ):
        monkeypatch.delenv(k, raising=False)
    # Where it applies, it sticks (mallopt is one-way) and is cached.
    assert runtime.keep_freed_memory() is (platform.libc_ver()[0] == "glibc")
    assert runtime.keep_freed_memory() is (platform.libc_ver()[0] == "glibc")


def _seeded_step(pairs: int, **options):
    """A TrainStep on a fresh seed-0 ConvNeXt-Atto with InfoNCE and AdamW, and a seeded batch."""
    import torch

    from geokit.engine import TrainStep
    from geokit.registry import create

    torch.manual_seed(0)
    enc = create("encoder", "convnext", {"model": "convnext_atto", "pretrained": False})
    loss = create("loss", "infonce", {})
    opt = torch.optim.AdamW([*enc.parameters(), *loss.parameters()], lr=1e-3)
    g = torch.Generator().manual_seed(1)
    q, r = torch.randn(pairs, 3, 32, 64, generator=g), torch.randn(pairs, 3, 32, 32, generator=g)
    return TrainStep(enc, loss, opt, device=torch.device("cpu"), **options), q, r


@pytest.mark.parametrize("chunk", [1, 3])
def test_gradient_caching_gives_the_plain_gradients(chunk):
    import torch

    grads = []
    for cache in (None, chunk):
        step, q, r = _seeded_step(5, grad_cache_chunk=cache)
        value = step.backward(q, r)
        grads.append((float(value), [p.grad.clone() for p in step.params]))
    (l0, g0), (l1, g1) = grads
    assert l0 == pytest.approx(l1, rel=1e-6)
    assert len(g0) == len(g1) and all(a is not None for a in g0)
    for a, b in zip(g0, g1):
        # float32 sums in another order: equal up to rounding, relative to the tensor's scale
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * float(a.abs().max()) + 1e-9)


@pytest.mark.parametrize("chunk, clip", [(None, None), (None, 0.01), (2, 0.01)])
def test_an_enabled_loss_scaler_gives_the_unscaled_step(chunk, clip):
    """The fp16 path's GradScaler (CUDA in real runs; here on the CPU, in float32): scaling the loss
    by a power of two and unscaling before clipping and stepping must give the weights of a step
    without a scaler — also through gradient caching, where the scaled loss's gradient is cached."""
    import torch

    weights = []
    for enabled in (False, True):
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, enabled=enabled)
        step, q, r = _seeded_step(4, scaler=scaler, clip_value=clip, grad_cache_chunk=chunk)
        step.step(q, r, lr=1e-3)
        assert scaler.get_scale() == (2.0**10 if enabled else 1.0)  # no overflow: the scale stays
        weights.append([p.detach().clone() for p in step.params])
    for a, b in zip(*weights):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-8)


def _truncate_a_training_image(root):
    from PIL import Image

    rows = (root / "train.csv").read_text().splitlines()
    victim = root / rows[4].split(",")[0]  # the query of training pair 3
    tmp = victim.with_suffix(".jpg")
    Image.open(victim).convert("RGB").save(tmp, "JPEG", quality=95)
    data = tmp.read_bytes()
    tmp.unlink()
    victim.write_bytes(data[: len(data) // 2])  # a JPEG cut in half, under the old name
    return victim


def test_a_truncated_jpeg_is_an_error_naming_the_file(tmp_path):
    root = make_pairs_dataset(tmp_path / "data", n_train=16, n_test=8)
    victim = _truncate_a_training_image(root)
    with pytest.raises(GeokitError) as err:
        _train(root, tmp_path / "run", train={"epochs": 1})
    assert str(victim) in str(err.value) and "train.bad_images=skip" in str(err.value)


def test_a_truncated_jpeg_is_skipped_and_counted_on_request(tmp_path, caplog):
    root = make_pairs_dataset(tmp_path / "data", n_train=16, n_test=8)
    _truncate_a_training_image(root)
    # one persistent worker process: the skip marker and the epoch must cross the process boundary
    res = _train(root, tmp_path / "run", train={"epochs": 2, "bad_images": "skip", "workers": 1})
    assert [row["skipped_pairs"] for row in res.history] == [1, 1]  # every pair is used once per epoch
    assert (tmp_path / "run" / "model.safetensors").exists()
    assert "skipped 2 training pairs" in (tmp_path / "run" / "train.log").read_text()


def test_a_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, pairs_root, monkeypatch):
    import torch

    import geokit.engine._setup as T  # where train() calls build()

    real_build = T.build

    def build_with_a_loss_that_breaks(config, **kw):
        parts = real_build(config, **kw)
        inner, calls = parts.loss, {"n": 0}

        class Breaks(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = inner

            def forward(self, q, r):
                calls["n"] += 1
                value = self.inner(q, r)
                return value * float("nan") if calls["n"] == 8 else value  # step 2 of epoch 2

        parts.loss = Breaks()
        return parts

    monkeypatch.setattr(T, "build", build_with_a_loss_that_breaks)
    out = tmp_path / "run"
    with pytest.raises(GeokitError, match="loss became nan at epoch 2, step 8") as err:
        _train(pairs_root, out)
    assert str(out / "state.safetensors") in str(err.value)
    from geokit.checkpoint import load_state

    state = load_state(out / "state.safetensors")
    assert state["epoch"] == 1 and state["epoch_done"] and state["step"] == 6
    assert not (out / "model.safetensors").exists()


@pytest.mark.slow
def test_a_failing_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, pairs_root, monkeypatch):
    import safetensors.torch

    from geokit.checkpoint import load_state

    real_save = safetensors.torch.save_file
    calls = {"n": 0}

    def disk_full_on_second_state(tensors, filename, metadata=None):
        calls["n"] += 1 if ".state.safetensors." in filename else 0
        if calls["n"] == 2 and ".state.safetensors." in filename:
            with open(filename, "wb") as fh:
                fh.write(b"\0" * 100)  # half a file, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full_on_second_state)
    out = tmp_path / "run"
    with pytest.raises(GeokitError, match="No space left on device.*previous checkpoint is intact"):
        _train(pairs_root, out)
    assert load_state(out / "state.safetensors")["epoch"] == 1
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    res = _train(pairs_root, out)  # the same command resumes from epoch 1's checkpoint
    assert res.epochs_run == 1 and [r["epoch"] for r in res.history] == [1, 2]


def test_periodic_evaluation_monitors_the_val_split_and_tensorboard_is_optional(tmp_path, pairs_root, monkeypatch):
    written = []

    class FakeWriter:
        def __init__(self, folder):
            written.append(("open", folder))

        def add_scalar(self, key, value, step):
            written.append((key, value, step))

        def close(self):
            written.append(("close",))

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    out = tmp_path / "run"
    res = _train(pairs_root, out, train={"epochs": 1, "eval_every": 1, "log_every": 2})
    assert "eval/R@1" in res.history[0]
    log = (out / "train.log").read_text()
    assert "pairs / val (monitoring only, no model selection)" in log
    assert "versions:" in log.split("training pairs")[0]  # config and versions at the top
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["eval/R@1"] == res.history[0]["eval/R@1"]
    steps = [json.loads(x) for x in (out / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [2, 4, 6]
    keys = {w[0] for w in written}
    assert {"train/loss", "train/lr", "epoch/loss", "epoch/eval/R@1", "close"} <= keys
    assert all(np.isfinite(w[1]) for w in written if w[0] == "train/loss")
