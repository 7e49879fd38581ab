"""benchmarks/gpu_check.py --tiny runs every check group on the CPU (so the script the GPU
sessions depend on cannot rot) and writes a JSON whose checks all ran or were skipped by design."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


@pytest.mark.slow
def test_gpu_check_tiny_runs_every_group(tmp_path, capsys):
    import torch

    threads = torch.get_num_threads()
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "gc.json"
    try:
        assert mod.main(["--tiny", "--budget", "300", "--json", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    res = json.loads(out.read_text())
    assert res["tiny"] is True and res["env"]["device"] == "cpu"
    rows = {(r["group"], r["name"]): r for r in res["checks"]}
    bad = {k: r.get("error") for k, r in rows.items() if r["status"] not in ("ok", "skipped")}
    assert not bad, bad
    groups = {g for g, _ in rows}
    assert {"cuda_paths", "train", "loader", "embed", "mining", "retrieval"} <= groups, groups
    # what runs on a CPU must have run (a skip here would be the budget, i.e. a broken check)
    for key in [
        ("cuda_paths", "train_then_evaluate"),
        ("cuda_paths", "fp16_gradscaler_step"),
        ("train", "cvusa/bf16+cl"),
        ("train", "cvusa/fp16+ckpt"),
        ("train", "cvusa/fp32"),
        ("loader", "cvusa"),
        ("retrieval", "cpu_path_vigor_size"),
        ("retrieval", "torch_cpu_vigor_size"),
    ]:
        assert rows[key]["status"] == "ok", rows[key]
    assert rows[("train", "cvusa/fp32")]["pairs_per_s"] > 0
    assert rows[("retrieval", "torch_cpu_vigor_size")]["agree"] is True  # the torch ranks = the CPU metrics
    assert rows[("cuda_paths", "ddp_nccl_2_ranks")]["reason"].startswith("NCCL needs 2 GPUs")
    table = capsys.readouterr().out
    assert "train_then_evaluate" in table and "JSON:" in table
