"""Two gloo ranks under torchrun see the same global batches as one process: the per-step losses
and the final weights agree to float tolerance, with and without gradient caching."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from safetensors.torch import load_file

from geokit.config import resolve
from geokit.testing import tiny_config
from geokit.training import read_steps


@pytest.fixture(autouse=True)
def _keep_threads():
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _torchrun(cfg_path, out, *sets):
    env = dict(os.environ, HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1", GEOKIT_PROGRESS="0",
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "geokit", "train", "--config", str(cfg_path), "--output", str(out)]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_two_gloo_ranks_match_one_process(tmp_path, pairs_root):
    import torch

    from geokit.training import train

    # The random sampler with 48 pairs and batch 8: 6 global batches per epoch, 4 pairs per rank.
    cfg = tiny_config(pairs_root, train={"epochs": 2, "threads": 1, "log_every": 1})
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    train(resolve(cfg), tmp_path / "single", show=False)
    single = read_steps(tmp_path / "single")
    assert len(single) == 12

    for name, sets in (("ddp", ()), ("ddp_cached", ("train.grad_cache_chunk=1",))):
        proc = _torchrun(cfg_path, tmp_path / name, *sets)
        assert "ranks 2" in proc.stderr, proc.stderr[-2000:]
        steps = read_steps(tmp_path / name)
        assert [s["step"] for s in steps] == [s["step"] for s in single]
        for a, b in zip(single, steps):
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6), (name, a, b)
            assert b["lr"] == a["lr"]
        w1, w2 = load_file(tmp_path / "single" / "model.safetensors"), load_file(tmp_path / name / "model.safetensors")
        for k in w1:
            torch.testing.assert_close(w2[k], w1[k], rtol=1e-3, atol=1e-4, msg=lambda m, k=k: f"{name} {k}: {m}")
