"""Two gloo ranks under torchrun see the same global batches as one process: the per-step losses
and the final weights agree to float tolerance, with and without gradient caching. SIGTERM
stops both ranks after the same step with the state saved, and the resumed run ends with the
weights of an uninterrupted one."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from geokit.config import resolve
from geokit.engine import read_steps
from geokit.testing import run_torchrun, tiny_config, torchrun_command

pytestmark = pytest.mark.slow  # torchrun runs (20-55 s)


@pytest.fixture(autouse=True)
def _keep_threads():
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _train_args(cfg_path, out, *sets) -> list[str]:
    return ["train", "--config", str(cfg_path), "--output", str(out), *(a for s in sets for a in ("--set", s))]


def _torchrun(cfg_path, out, *sets):
    return run_torchrun(_train_args(cfg_path, out, *sets), timeout=300)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, pairs_root):
    """The tiny config (random sampler, 48 pairs, batch 8: 6 global batches per epoch, 4 pairs
    per rank, 2 epochs) and one uninterrupted 2-rank run of it, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("ddp")
    cfg = tiny_config(pairs_root, train={"epochs": 2, "threads": 1, "log_every": 1})
    cfg_path = tmp / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    proc = _torchrun(cfg_path, tmp / "ddp")
    return cfg, cfg_path, tmp / "ddp", proc


def test_two_gloo_ranks_match_one_process(tmp_path, ddp_run):
    import torch

    from geokit.engine import train

    cfg, cfg_path, ddp_out, ddp_proc = ddp_run
    train(resolve(cfg), tmp_path / "single", show=False)
    single = read_steps(tmp_path / "single")
    assert len(single) == 12

    for name in ("ddp", "ddp_cached"):
        if name == "ddp":
            out, proc = ddp_out, ddp_proc
        else:
            out = tmp_path / name
            proc = _torchrun(cfg_path, out, "train.grad_cache_chunk=1")
        assert "ranks 2" in proc.stderr, proc.stderr[-2000:]
        steps = read_steps(out)
        assert [s["step"] for s in steps] == [s["step"] for s in single]
        for a, b in zip(single, steps):
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6), (name, a, b)
            assert b["lr"] == a["lr"]
        w1, w2 = load_file(tmp_path / "single" / "model.safetensors"), load_file(out / "model.safetensors")
        for k in w1:
            torch.testing.assert_close(w2[k], w1[k], rtol=1e-3, atol=1e-4, msg=lambda m, k=k: f"{name} {k}: {m}")


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # field 4: the parent's pid
                kids.append(int(entry.name))
    return kids


def _rank_pid(torchrun_pid: int, rank: int, timeout: float = 30.0) -> int:
    """The pid of a torchrun worker, found by the RANK in its environment."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for pid in _children(torchrun_pid):
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in env:
                return pid
        time.sleep(0.05)
    raise AssertionError(f"no rank {rank} under torchrun pid {torchrun_pid}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the ranks through /proc")
def test_sigterm_under_torchrun_stops_every_rank_after_the_same_step_then_resumes_exactly(tmp_path, ddp_run):
    """SIGTERM to torchrun (forwarded to both ranks), then SIGTERM to rank 1 alone near the end of
    the first epoch (the other rank must stop too, after the same step or at the epoch end);
    each time every rank exits cleanly with the state saved, and the resumed run ends
    bit-identical to the uninterrupted one."""
    from geokit.checkpoint import load_state

    _, cfg_path, ddp_out, _ = ddp_run
    out = tmp_path / "stopped"
    seed = random.SystemRandom().randrange(2**31)
    rng = random.Random(seed)
    notes = []
    # (whom to signal, after which logged step): 12 steps in all, 6 per epoch.
    for who, after in (("torchrun", rng.randint(1, 3)), ("rank 1", 5)):
        seen = len(read_steps(out))
        cmd, env = torchrun_command(_train_args(cfg_path, out))
        # Its own session, so that a hung run can be ended as a whole (torchrun and its ranks).
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        try:
            target = _rank_pid(proc.pid, 1) if who == "rank 1" else proc.pid
            end = time.monotonic() + 120
            while len(read_steps(out)) < after and proc.poll() is None and time.monotonic() < end:
                time.sleep(0.02)
            assert proc.poll() is None, f"run ended before step {after}: " + proc.communicate()[0][-3000:]
            # Land anywhere in the next step; for rank 1 after step 5 that is often the epoch's
            # last step, whose signal only the epoch-end check sees (a step takes ~0.15 s here).
            time.sleep(rng.uniform(0.0, 0.2))
            t0 = time.monotonic()
            os.kill(target, signal.SIGTERM)
            try:
                text = proc.communicate(timeout=60)[0]
            except subprocess.TimeoutExpired:
                raise AssertionError(
                    f"{who} after step {after}: no exit 60 s after SIGTERM (seed {seed}, {notes})"
                ) from None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        took = time.monotonic() - t0
        notes.append(f"{who} after step {after}: rc {proc.returncode}, {took:.1f} s")
        # Every rank reports the stop itself, well before torchrun's 30 s grace runs out (no
        # SIGKILL), and none fails in a collective (a rank that stopped alone would leave the
        # other waiting in the next epoch's first step, or torchrun would end it unreported).
        assert text.count("Error: training stopped by") == 2, (notes, text[-4000:])
        assert "training stopped by SIGTERM" in text and "Re-run the same command" in text, (notes, text[-4000:])
        assert took < 25 and "collective operation failed" not in text, (notes, text[-4000:])
        state = load_state(out / "state.safetensors")
        logged = read_steps(out)
        # The saved state is that of the last step every rank finished: none lost, none half-done.
        assert int(state["step"]) == len(logged) > seen, (notes, int(state["step"]), len(logged))
        assert not (out / "model.safetensors").exists()

    final = _torchrun(cfg_path, out)
    assert "resuming" in final.stderr, final.stderr[-3000:]
    expected, got = load_file(ddp_out / "model.safetensors"), load_file(out / "model.safetensors")
    assert sorted(got) == sorted(expected)
    differ = [k for k in expected if not bool((got[k] == expected[k]).all())]
    assert not differ, f"weights differ after resume (seed {seed}, {notes}): {differ[:5]}"
    assert [s["loss"] for s in read_steps(out)] == [s["loss"] for s in read_steps(ddp_out)], notes
    print(
        seed,
        notes,
        [line.split(" ", 3)[-1] for line in (out / "train.log").read_text().splitlines() if "resuming" in line],
    )
