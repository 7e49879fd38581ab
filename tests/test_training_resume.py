"""Exact resume: a tiny CPU run killed with SIGKILL at random points (and once stopped with
SIGTERM), then re-run with the same command, ends with weights bit-identical to a run that was
never interrupted."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import yaml
from safetensors.torch import load_file

from geokit.config import resolve
from geokit.testing import make_pairs_dataset, tiny_config


@pytest.fixture(autouse=True)
def _keep_threads():
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1", GEOKIT_PROGRESS="0")
    env.pop("WORLD_SIZE", None)
    return env


def _start(cfg_path, out):
    return subprocess.Popen(
        [sys.executable, "-m", "geokit", "train", "--config", str(cfg_path), "--output", str(out)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for(out, text, count, proc, timeout=60.0):
    """Until train.log holds ``text`` ``count`` times (or the process ended)."""
    log = out / "train.log"
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if log.exists() and log.read_text().count(text) >= count:
            return True
        time.sleep(0.02)
    return False


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_gives_identical_weights(tmp_path):
    from geokit.engine import train

    root = make_pairs_dataset(tmp_path / "data", n_train=32, n_test=8)
    # drop_path > 0: the per-step RNG must be restored too; augmentation on (pairs default).
    cfg = tiny_config(
        root, encoder={"drop_path_rate": 0.1}, train={"epochs": 3, "checkpoint_every": 1, "threads": 1, "log_every": 1}
    )
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))

    train(resolve(cfg), tmp_path / "straight", show=False)
    expected = load_file(tmp_path / "straight" / "model.safetensors")

    out = tmp_path / "killed"
    seed = random.SystemRandom().randrange(2**31)  # train() seeds the global `random`
    rng = random.Random(seed)
    # 12 steps in all; stop after three random steps, a random moment later (mid-step, mid-checkpoint).
    targets = sorted(rng.sample(range(1, 12), 3))
    notes = []
    for attempt, target in enumerate(targets):
        mark = f" step {target} loss"
        seen = (out / "train.log").read_text().count(mark) if (out / "train.log").exists() else 0
        proc = _start(cfg_path, out)
        if not _wait_for(out, mark, seen + 1, proc):
            notes.append(f"run {attempt} ended before step {target} ({proc.wait(60)})")
            proc.stdout.close()
            continue
        time.sleep(rng.uniform(0.0, 0.3))
        if attempt < 2:
            proc.send_signal(signal.SIGKILL)
            notes.append(f"SIGKILL after step {target} (rc {proc.wait(60)})")
            proc.stdout.close()
        else:  # a polite stop: finish the step, checkpoint, exit with a message
            proc.send_signal(signal.SIGTERM)
            text = proc.communicate(timeout=60)[0]
            if proc.returncode == 0:
                notes.append("SIGTERM arrived after the run finished")
            else:
                assert "training stopped by SIGTERM" in text and "Re-run the same command" in text, text
                notes.append(f"SIGTERM after step {target}: stopped cleanly")
    final = _start(cfg_path, out)
    text = final.communicate(timeout=120)[0]
    assert final.returncode == 0, text
    got = load_file(out / "model.safetensors")
    assert sorted(got) == sorted(expected)
    differ = [k for k in expected if not (got[k].dtype == expected[k].dtype and bool((got[k] == expected[k]).all()))]
    assert not differ, f"weights differ after resume (delay seed {seed}, {notes}): {differ[:5]}"
    log = (out / "train.log").read_text()
    print(seed, notes, [line.split(" ", 3)[-1] for line in log.splitlines() if "resuming" in line])
    assert log.count("resuming") >= 1, notes
