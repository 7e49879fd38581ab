"""One call that measures everything geokit needs to know about a GPU, in at most ~8 minutes.

    python benchmarks/gpu_check.py                      # on a GPU node: JSON + table
    python benchmarks/gpu_check.py --tiny               # CPU, a minute or two (CI runs this)
    python benchmarks/gpu_check.py --budget 300 --json out.json

Checks, most informative first, each isolated (an error such as running out of memory is
recorded in the JSON and the next check runs); a global time budget skips what would not fit:

1. ``cuda_paths``: the code paths that only run on a GPU, called directly: ``geokit train``
   (1 epoch of a tiny pairs dataset: default mixed precision, channels_last, pinned-memory
   loader with workers) then ``evaluate`` on the GPU and on the CPU (agreement of the
   metrics/embeddings); one TrainStep with fp16 autocast + GradScaler (``train.amp_dtype=float16``); two ranks over NCCL
   under torchrun (needs ≥ 2 GPUs, else skipped); the test files that mention CUDA (their
   CUDA branches are skipped on a CPU), through pytest.
2. ``train``: training throughput (pairs/s, the real ``geokit.engine.TrainStep``: forward of
   both views, symmetric InfoNCE, backward, clipping, AdamW) of ConvNeXt-Base (random
   init, ``pretrained=False``) at the CVUSA (140x768 / 384x384) and VIGOR (384x768 / 384x384)
   sizes in fp32, bf16 and fp16 + GradScaler, with/without channels_last and gradient
   checkpointing; batch 128 pairs, halved on out-of-memory (the batch used is recorded);
   peak GPU memory.
3. ``loader``: the training DataLoader (decode + resize + Sample4Geo augmentation of synthetic
   JPEGs at the datasets' real file sizes) in pairs/s for 0..N workers: is the GPU or the
   loader the limit? (Files are read from the page cache: decoding, not disk, is measured.)
4. ``embed`` / ``mining``: inference embedding images/s per view (evaluation and DSS mining
   embed the same way), and DSS neighbour mining (exact top-k) at the VIGOR training size.
5. ``retrieval``: exact retrieval metrics at the VIGOR test size on the CPU path
   (``geokit.metrics.retrieval_metrics``, ``geokit.retrieval.search``) vs a plain torch
   top-k on the GPU: time and agreement.

``--tiny`` runs the same code on the CPU with a tiny model, tiny images and small galleries,
so that the script cannot rot (``tests/test_gpu_check.py``). Numbers from ``--tiny`` mean
nothing; the JSON says ``"tiny": true``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("GEOKIT_PROGRESS", "0")

REPO = Path(__file__).resolve().parent.parent

# (query HxW, reference HxW) that the model sees, and the JPEG sizes of the real files (WxH).
SIZES = {"cvusa": ((140, 768), (384, 384)), "vigor": ((384, 768), (384, 384))}
FILES = {"cvusa": ((1232, 224), (750, 750)), "vigor": ((2048, 1024), (640, 640))}
VIGOR_TEST = (52605, 90618)  # same-area test panoramas x aerial tiles
VIGOR_TRAIN = (52609, 90618)


class Budget:
    def __init__(self, seconds: float) -> None:
        self.start, self.total = time.monotonic(), float(seconds)

    def left(self) -> float:
        return self.total - (time.monotonic() - self.start)


class Check:
    """Runs measurements in isolation and keeps their results."""

    def __init__(self, budget: Budget, verbose: bool = True) -> None:
        self.budget, self.rows, self.verbose = budget, [], verbose

    def run(self, group: str, name: str, fn: Callable[[], dict[str, Any]], estimate_s: float) -> dict[str, Any]:
        row: dict[str, Any] = {"group": group, "name": name}
        if self.budget.left() < estimate_s:
            row.update(
                status="skipped", reason=f"time budget: {self.budget.left():.0f} s left, needs ~{estimate_s:.0f} s"
            )
        else:
            t0 = time.monotonic()
            try:
                row.update(fn())
                row.setdefault("status", "ok")
            except Exception as exc:  # noqa: BLE001 (every failure is a result)
                row.update(
                    status="oom" if _is_oom(exc) else "error",
                    error=f"{type(exc).__name__}: {str(exc).strip()[:400]}",
                    where=traceback.format_exc(limit=-3)[-1200:],
                )
            finally:
                _free()
            row["seconds"] = round(time.monotonic() - t0, 2)
        self.rows.append(row)
        if self.verbose:
            print(
                f"[{self.budget.left():5.0f}s left] {group}/{name}: {row.get('status')} {_brief(row)}",
                file=sys.stderr,
                flush=True,
            )
        return row


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _free() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _brief(row: dict[str, Any]) -> str:
    keys = (
        "pairs_per_s",
        "batch",
        "peak_mem_gib",
        "images_per_s",
        "best_workers",
        "cpu_s",
        "gpu_s",
        "speedup",
        "agree",
        "passed",
        "reason",
        "error",
    )
    return ", ".join(f"{k}={row[k]}" for k in keys if k in row)


# ------------------------------------------------------------------------------ helpers


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gib(device: Any) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def _reset_peak(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _tiny(sizes: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    """A quarter of each side, at least 32 px (the smallest ConvNeXt input)."""
    return tuple((max(32, h // 4), max(32, w // 4)) for h, w in sizes)


def _write_jpegs(folder: Path, n: int, dataset: str, scale: float = 1.0) -> Path:
    """A ``pairs`` dataset of ``n`` synthetic JPEG pairs at the real files' sizes (x ``scale``)."""
    import numpy as np
    from PIL import Image

    (q_size, r_size) = FILES[dataset]
    root = folder / f"{dataset}-{n}-{scale}"
    if (root / "test.csv").is_file():  # written by an earlier check
        return root
    (root / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    noise = {}
    for i in range(n):
        for kind, (w, h) in (("q", q_size), ("r", r_size)):
            w, h = max(8, int(w * scale)), max(8, int(h * scale))
            # smooth colour fields + noise: JPEG sizes of real photos, not of flat colours
            if (w, h) not in noise:
                noise[(w, h)] = rng.normal(0, 20, (h, w, 3)).astype(np.int16)
            base = rng.integers(0, 235, (max(2, h // 32 + 1), max(2, w // 32 + 1), 3), dtype=np.int16)
            img = np.kron(base, np.ones((32, 32, 1), dtype=np.int16))[:h, :w]
            img = np.clip(img + np.roll(noise[(w, h)], i * 7, axis=1), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / "img" / f"{kind}{i:05d}.jpg", quality=90)
        rows.append(f"img/q{i:05d}.jpg,img/r{i:05d}.jpg")
    for split in ("train", "test"):
        (root / f"{split}.csv").write_text("query,reference\n" + "\n".join(rows) + "\n")
    return root


# ------------------------------------------------------------------------------ 1. CUDA paths


def check_cuda_paths(chk: Check, device: Any, tiny: bool, tmp: Path) -> None:
    import torch

    from geokit.testing import make_pairs_dataset, run_torchrun, tiny_config

    root = make_pairs_dataset(tmp / "pairs", n_train=8 if tiny else 64, n_test=8 if tiny else 32)

    def engine() -> dict[str, Any]:
        from geokit.config import resolve
        from geokit.engine import train
        from geokit.engine.evaluation import evaluate

        cfg = tiny_config(root, train={"epochs": 1, "device": device.type, "workers": 0 if tiny else 2, "log_every": 1})
        res = train(resolve(cfg), tmp / "run", show=False)
        on_dev = evaluate(resolve(cfg), tmp / "run" / "model.safetensors", show=False)
        on_cpu = (
            on_dev
            if device.type == "cpu"
            else evaluate(
                resolve(tiny_config(root, train={"device": "cpu"})), tmp / "run" / "model.safetensors", show=False
            )
        )
        diff = float(abs(on_dev.query - on_cpu.query).max())
        return {
            "final_loss": round(float(res.history[-1]["loss"]), 4),
            "metrics_device": on_dev.metrics,
            "metrics_cpu": on_cpu.metrics,
            "max_embedding_diff": diff,
            "agree": on_dev.metrics.get("R@1") == on_cpu.metrics.get("R@1"),
        }

    chk.run("cuda_paths", "train_then_evaluate", engine, 20)

    def fp16_scaler() -> dict[str, Any]:
        from geokit.engine import TrainStep
        from geokit.registry import create

        if device.type == "cpu" and not hasattr(torch.amp, "GradScaler"):
            return {"status": "skipped", "reason": "torch.amp.GradScaler missing"}
        torch.manual_seed(0)
        enc = create("encoder", "convnext", {"model": "convnext_atto", "pretrained": False}).to(device)
        loss = create("loss", "infonce", {}).to(device)
        opt = torch.optim.AdamW([*enc.parameters(), *loss.parameters()], lr=1e-4)
        scaler = torch.amp.GradScaler(device.type, init_scale=2.0**10)  # as the engine (train.amp_dtype=float16)
        step = TrainStep(enc, loss, opt, device=device, amp="float16", scaler=scaler, clip_value=100.0)
        g = torch.Generator().manual_seed(0)
        losses = []
        for _ in range(1 if tiny else 3):
            q, r = torch.randn(4, 3, 32, 64, generator=g), torch.randn(4, 3, 32, 32, generator=g)
            losses.append(float(step.step(q, r, 1e-4)))
        finite = all(v == v and abs(v) < 1e6 for v in losses)
        return {
            "losses": [round(v, 4) for v in losses],
            "scale": float(scaler.get_scale()),
            "passed": finite,
            **({} if finite else {"status": "error", "error": "non-finite loss"}),
        }

    chk.run("cuda_paths", "fp16_gradscaler_step", fp16_scaler, 10)

    def nccl() -> dict[str, Any]:
        if device.type != "cuda" or torch.cuda.device_count() < 2:
            return {"status": "skipped", "reason": "NCCL needs 2 GPUs (one rank per GPU)"}
        import yaml

        cfg = tiny_config(root, train={"epochs": 1, "device": "cuda", "workers": 2})
        (tmp / "ddp.yaml").write_text(yaml.safe_dump(cfg))
        outs = {}
        for cmd in (
            ["train", "--config", str(tmp / "ddp.yaml"), "--output", str(tmp / "ddp")],
            ["evaluate", "--config", str(tmp / "ddp.yaml"), "--checkpoint", str(tmp / "ddp" / "model.safetensors")],
        ):
            p = run_torchrun(cmd, nproc=2, timeout=180, check=False)
            outs[cmd[0]] = p.returncode
            if p.returncode:
                return {"status": "error", "error": f"torchrun {cmd[0]}: rc {p.returncode}: {p.stderr[-600:]}"}
        return {"passed": True, "rc": outs}

    two_gpus = device.type == "cuda" and torch.cuda.device_count() >= 2
    chk.run("cuda_paths", "ddp_nccl_2_ranks", nccl, 60 if two_gpus else 0)

    def pytest_cuda() -> dict[str, Any]:
        # the test files that mention CUDA: on a CPU their CUDA branches are skipped
        files = sorted(
            str(f)
            for f in (REPO / "tests").glob("test_*.py")
            if f.name != "test_gpu_check.py" and "cuda" in f.read_text(errors="ignore").lower()
        )
        if not files:
            return {"status": "skipped", "reason": "no test file mentions CUDA"}
        if tiny:
            return {"status": "skipped", "reason": f"--tiny ({len(files)} files; CI runs them anyway)", "files": files}
        p = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-rs", *files],
            capture_output=True,
            text=True,
            timeout=max(30, min(180, chk.budget.left() - 30)),
            cwd=REPO,
            env=dict(os.environ, OMP_NUM_THREADS="4"),
        )
        last = (p.stdout.strip().splitlines() or [""])[-1]
        return {
            "passed": p.returncode == 0,
            "summary": last,
            "rc": p.returncode,
            "files": files,
            **({} if p.returncode == 0 else {"status": "error", "error": p.stdout[-800:]}),
        }

    chk.run("cuda_paths", "pytest_cuda_test_files", pytest_cuda, 0 if tiny else 60)


# ------------------------------------------------------------------------------ 2. training


def check_training(chk: Check, device: Any, tiny: bool) -> None:

    model = "convnext_atto" if tiny else "convnext_base"
    batch0 = 4 if tiny else 128
    steps, warm = (1, 0) if tiny else (3, 2)
    datasets = ["cvusa"] if tiny else ["vigor", "cvusa"]
    precisions = {"fp32": False, "bf16": "bfloat16", "fp16": "float16"}  # TrainStep's amp (train.amp_dtype)
    # most telling first: the likely default (bf16 + channels_last), then the alternatives
    configs = [
        ("bf16", True, False),
        ("fp16", True, False),
        ("fp32", True, False),
        ("bf16", False, False),
        ("fp16", False, False),
        ("fp32", False, False),
        ("bf16", True, True),
        ("fp16", True, True),
        ("fp32", True, True),
        ("bf16", False, True),
        ("fp16", False, True),
        ("fp32", False, True),
    ]
    if tiny:  # every precision, layout and checkpointing once
        configs = [("bf16", True, False), ("fp16", False, True), ("fp32", False, False)]
    # at most half of what is left, so that the loader, embedding and retrieval checks still run
    deadline = time.monotonic() + 0.5 * chk.budget.left()
    for prec, cl, gc in configs:  # each configuration on both datasets before the next one
        for ds in datasets:
            (qh, qw), (rh, rw) = ((32, 64), (32, 32)) if tiny else SIZES[ds]
            name = f"{ds}/{prec}{'+cl' if cl else ''}{'+ckpt' if gc else ''}"
            if not tiny and time.monotonic() > deadline:
                chk.rows.append(
                    {
                        "group": "train",
                        "name": name,
                        "status": "skipped",
                        "reason": "the training checks' half of the time budget is spent",
                    }
                )
                continue

            def measure(
                prec: str = prec, cl: bool = cl, gc: bool = gc, qh: int = qh, qw: int = qw, rh: int = rh, rw: int = rw
            ) -> dict[str, Any]:
                batch = batch0
                while True:
                    try:
                        return _train_rate(
                            model, device, precisions[prec], cl, gc, batch, (qh, qw), (rh, rw), steps, warm
                        )
                    except Exception as exc:
                        if not _is_oom(exc) or batch <= 8:
                            raise
                        _free()
                        batch //= 2

            chk.run("train", name, measure, 8 if tiny else 25)


def _train_rate(
    model: str,
    device: Any,
    amp: bool | str,
    cl: bool,
    gc: bool,
    batch: int,
    qs: tuple[int, int],
    rs: tuple[int, int],
    steps: int,
    warm: int,
) -> dict[str, Any]:
    import torch

    from geokit.engine import TrainStep
    from geokit.registry import create

    _reset_peak(device)
    torch.manual_seed(0)
    enc = create("encoder", "convnext", {"model": model, "pretrained": False, "grad_checkpointing": gc}).to(device)
    loss = create("loss", "infonce", {}).to(device)
    if cl:
        enc.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW([*enc.parameters(), *loss.parameters()], lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0**10) if amp == "float16" else None
    step = TrainStep(enc, loss, opt, device=device, amp=amp, scaler=scaler, clip_value=100.0, channels_last=cl)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(batch, 3, *qs, generator=g)
    r = torch.randn(batch, 3, *rs, generator=g)
    if device.type == "cuda":
        q, r = q.pin_memory(), r.pin_memory()
    for _ in range(warm):
        step.step(q, r, 1e-4)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        last = step.step(q, r, 1e-4)
    _sync(device)
    dt = time.perf_counter() - t0
    return {
        "pairs_per_s": round(batch * steps / dt, 1),
        "batch": batch,
        "step_s": round(dt / steps, 3),
        "peak_mem_gib": _peak_gib(device),
        "loss": round(float(last), 4),
    }


# ------------------------------------------------------------------------------ 3. loader


def check_loader(chk: Check, device: Any, tiny: bool, tmp: Path) -> None:
    import torch

    from geokit.data import PairList
    from geokit.engine import collate_pairs
    from geokit.registry import create

    cpus = os.cpu_count() or 1
    workers = [0, 1] if tiny else sorted(w for w in {0, 2, 4, 8, 16, cpus} if w <= cpus)
    max_s = None if tiny else 6.0  # per worker count: enough batches for a rate, not the whole list
    n_files = 8 if tiny else 32
    items = 16 if tiny else 1024
    bs = 4 if tiny else 32
    for ds_name in ["cvusa"] if tiny else ["vigor", "cvusa"]:

        def measure(ds_name: str = ds_name) -> dict[str, Any]:
            root = _write_jpegs(tmp / "jpeg", n_files, ds_name, 0.125 if tiny else 1.0)
            (qh, qw), (rh, rw) = _tiny(SIZES[ds_name]) if tiny else SIZES[ds_name]
            ds = create("dataset", "pairs", {"root": str(root), "query_size": [qh, qw], "reference_size": [rh, rw]})
            tr = ds.train_set()
            pairs = PairList(ds, tr, seed=0)
            keys = [i % len(tr) for i in range(items)]
            batches = [keys[i : i + bs] for i in range(0, len(keys), bs)]
            rates = {}
            for w in workers:
                if chk.budget.left() < 20:
                    break
                loader = torch.utils.data.DataLoader(
                    pairs,
                    batch_sampler=batches,
                    num_workers=w,
                    collate_fn=collate_pairs,
                    pin_memory=device.type == "cuda",
                )
                it = iter(loader)
                next(it)  # workers started and warm
                t0 = time.perf_counter()
                n = 0
                for b in it:
                    n += len(b[0])
                    if max_s is not None and time.perf_counter() - t0 > max_s:
                        break
                rates[w] = round(n / (time.perf_counter() - t0), 1)
                del it, loader
            if not rates:
                return {"status": "skipped", "reason": "time budget"}
            best = max(rates, key=rates.get)
            return {
                "pairs_per_s_by_workers": rates,
                "best_workers": best,
                "pairs_per_s": rates[best],
                "batch": bs,
                "files": n_files,
                "cpus": cpus,
            }

        chk.run("loader", ds_name, measure, 10 if tiny else 60)


# ------------------------------------------------------------------------------ 4. embedding, mining


def check_embedding(chk: Check, device: Any, tiny: bool, tmp: Path) -> None:
    import numpy as np
    import torch

    from geokit.registry import create
    from geokit.runtime import autocast, default_embed_amp

    model = "convnext_atto" if tiny else "convnext_base"
    batch = 8 if tiny else 128
    for ds_name in ["cvusa"] if tiny else ["vigor", "cvusa"]:
        for view, size in zip(("query", "reference"), _tiny(SIZES[ds_name]) if tiny else SIZES[ds_name]):

            def measure(size: tuple[int, int] = size) -> dict[str, Any]:
                enc = create("encoder", "convnext", {"model": model, "pretrained": False}).to(device).eval()
                enc.to(memory_format=torch.channels_last)
                x = torch.randn(batch, 3, *size).to(device).contiguous(memory_format=torch.channels_last)
                amp = default_embed_amp(device)
                _reset_peak(device)
                with torch.inference_mode(), autocast(device, amp):
                    enc(x)
                    _sync(device)
                    t0 = time.perf_counter()
                    reps = 1 if tiny else 5
                    for _ in range(reps):
                        enc(x)
                    _sync(device)
                dt = time.perf_counter() - t0
                return {
                    "images_per_s": round(batch * reps / dt, 1),
                    "batch": batch,
                    "amp": amp,
                    "peak_mem_gib": _peak_gib(device),
                }

            chk.run("embed", f"{ds_name}/{view}", measure, 5 if tiny else 20)

    def end_to_end() -> dict[str, Any]:
        """embed_paths (the evaluation / mining path) over synthetic JPEGs, with loader workers."""
        from geokit.data import Normalisation
        from geokit.embedding import embed_paths
        from geokit.runtime import default_embed_amp, default_workers

        n_files = 8 if tiny else 32
        root = _write_jpegs(tmp / "jpeg", n_files, "vigor", 0.125 if tiny else 1.0)
        ds = create("dataset", "pairs", {"root": str(root)})
        refs = [str(root / "img" / f"r{i % n_files:05d}.jpg") for i in range(16 if tiny else 1024)]
        size = (48, 48) if tiny else SIZES["vigor"][1]
        enc = create("encoder", "convnext", {"model": model, "pretrained": False}).to(device)
        w = 0 if tiny else default_workers(device)
        t0 = time.perf_counter()
        out = embed_paths(
            enc,
            ds,
            refs,
            size,
            Normalisation(),
            batch_size=batch,
            device=device,
            amp=default_embed_amp(device),
            workers=w,
            show=False,
            view="reference",
        )
        dt = time.perf_counter() - t0
        return {"images_per_s": round(len(refs) / dt, 1), "workers": w, "batch": batch, "dim": int(out.shape[1])}

    chk.run("embed", "embed_paths_vigor_reference_jpeg", end_to_end, 10 if tiny else 40)

    def mining() -> dict[str, Any]:
        from geokit_plugins.samplers.dss import mine_neighbours

        nq, nr = (2000, 3000) if tiny else VIGOR_TRAIN
        dim = 64 if tiny else 1024
        rng = np.random.default_rng(0)
        r = rng.standard_normal((nr, dim), dtype=np.float32)
        r /= np.linalg.norm(r, axis=1, keepdims=True)
        pair_ref = rng.integers(0, nr, nq)
        q = r[pair_ref] + 0.5 * rng.standard_normal((nq, dim), dtype=np.float32)
        t0 = time.perf_counter()
        nb = mine_neighbours(q, r, pair_ref, 64)
        dt = time.perf_counter() - t0
        return {
            "cpu_s": round(dt, 2),
            "queries_per_s": round(nq / dt, 1),
            "shape": list(nb.shape),
            "note": "exact top-k on the CPU (geokit.retrieval.search); embedding the training set is 'embed'",
        }

    chk.run("mining", "dss_neighbours_vigor_train", mining, 10 if tiny else 90)


# ------------------------------------------------------------------------------ 5. retrieval


def check_retrieval(chk: Check, device: Any, tiny: bool) -> None:
    import numpy as np
    import torch

    from geokit.metrics import retrieval_metrics
    from geokit.retrieval import search

    nq, nr = (1500, 2500) if tiny else VIGOR_TEST
    dim = 64 if tiny else 1024
    state: dict[str, Any] = {}

    def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if "q" not in state:
            rng = np.random.default_rng(1)
            r = rng.standard_normal((nr, dim), dtype=np.float32)
            r /= np.linalg.norm(r, axis=1, keepdims=True)
            pos = rng.integers(0, nr, nq)
            q = (r[pos] + 7.2 / np.sqrt(dim) * rng.standard_normal((nq, dim))).astype(np.float32)
            q /= np.linalg.norm(q, axis=1, keepdims=True)
            state.update(q=q, r=r, pos=pos)
        return state["q"], state["r"], state["pos"]

    def cpu_metrics() -> dict[str, Any]:
        q, r, pos = data()
        t0 = time.perf_counter()
        m = retrieval_metrics(q, r, pos)
        dt = time.perf_counter() - t0
        state["cpu_metrics"] = m
        t1 = time.perf_counter()
        _, idx = search(q, r, 10)
        ds = time.perf_counter() - t1
        state["cpu_top10"] = idx
        return {
            "cpu_s": round(dt, 2),
            "search_top10_cpu_s": round(ds, 2),
            "metrics": m,
            "size": [nq, nr, dim],
            "threads": torch.get_num_threads(),
        }

    chk.run("retrieval", "cpu_path_vigor_size", cpu_metrics, 10 if tiny else 120)

    def gpu_metrics() -> dict[str, Any]:
        """Exact ranks on ``device`` with torch: float32 matmul blocks, the positive's rank is the
        count of strictly better references (the same definition as the CPU path)."""
        q, r, pos = data()
        qt, rt = torch.from_numpy(q).to(device), torch.from_numpy(r).to(device)
        pt = torch.from_numpy(pos).to(device)
        _sync(device)
        t0 = time.perf_counter()
        ranks = torch.empty(nq, dtype=torch.int64, device=device)
        top = torch.empty(nq, 10, dtype=torch.int64, device=device)
        block = 4096
        prev = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = False  # exact float32 scores, as on the CPU
        try:
            for s in range(0, nq, block):
                sc = qt[s : s + block] @ rt.T
                own = sc.gather(1, pt[s : s + block, None])
                ranks[s : s + block] = (sc > own).sum(1)
                top[s : s + block] = sc.topk(10, dim=1).indices
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev[0]
        _sync(device)
        dt = time.perf_counter() - t0
        rk = ranks.cpu().numpy()
        m = {f"R@{k}": float(100 * np.mean(rk < k)) for k in (1, 5, 10)}
        m["R@1%"] = float(100 * np.mean(rk < max(1, round(nr / 100))))
        out: dict[str, Any] = {"gpu_s": round(dt, 3), "metrics": m, "device": str(device)}
        if "cpu_metrics" in state:
            cm = state["cpu_metrics"]
            out["agree"] = all(abs(cm[k] - m[k]) < 1e-9 for k in m)
            out["speedup"] = round(next(r["cpu_s"] for r in chk.rows if r["name"] == "cpu_path_vigor_size") / dt, 1)
        if "cpu_top10" in state:
            out["top1_same"] = float(np.mean(top[:, 0].cpu().numpy() == state["cpu_top10"][:, 0]))
        return out

    chk.run("retrieval", f"torch_{device.type}_vigor_size", gpu_metrics, 5 if tiny else 30)


# ------------------------------------------------------------------------------ main


def environment(device: Any) -> dict[str, Any]:
    import torch

    import geokit

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "geokit": getattr(geokit, "__version__", "?"),
        "cpus": os.cpu_count(),
        "device": str(device),
        "host": platform.node(),
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(
            gpu=p.name,
            gpu_mem_gib=round(p.total_memory / 2**30, 1),
            gpus=torch.cuda.device_count(),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            bf16=torch.cuda.is_bf16_supported(),
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            tf32_cudnn=torch.backends.cudnn.allow_tf32,
        )
    return env


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'group':<11}{'check':<34}{'status':<9}{'s':>7}  result"]
    for r in rows:
        lines.append(
            f"{r['group']:<11}{r['name']:<34}{r.get('status', '?'):<9}{r.get('seconds', 0):>7.1f}  {_brief(r)[:110]}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="CPU, tiny model and data: checks that the script runs")
    ap.add_argument("--budget", type=float, default=None, help="seconds in all (default 450; --tiny: 120)")
    ap.add_argument("--json", default="gpu_check.json", help="write the results here")
    ap.add_argument(
        "--only", nargs="*", default=None, help="groups to run: cuda_paths train loader embed retrieval (default: all)"
    )
    ap.add_argument("--device", default=None, help="default: cuda when available (cpu with --tiny)")
    a = ap.parse_args(argv)

    import torch

    device = torch.device(a.device or ("cpu" if a.tiny or not torch.cuda.is_available() else "cuda"))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    budget = Budget(a.budget if a.budget is not None else (120 if a.tiny else 450))
    chk = Check(budget)
    groups = a.only or ["cuda_paths", "train", "loader", "embed", "retrieval"]
    result: dict[str, Any] = {
        "tiny": a.tiny,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "budget_s": budget.total,
        "env": environment(device),
    }
    if device.type != "cuda" and not a.tiny:
        print("no CUDA device: measuring the CPU (use --tiny for a quick run)", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="gpu_check.") as tmp:
        tmp_path = Path(tmp)
        steps = {
            "cuda_paths": lambda: check_cuda_paths(chk, device, a.tiny, tmp_path),
            "train": lambda: check_training(chk, device, a.tiny),
            "loader": lambda: check_loader(chk, device, a.tiny, tmp_path),
            "embed": lambda: check_embedding(chk, device, a.tiny, tmp_path),
            "retrieval": lambda: check_retrieval(chk, device, a.tiny),
        }
        for g in groups:
            try:
                steps[g]()
            except Exception as exc:  # noqa: BLE001 (set-up of a group failed: record, go on)
                chk.rows.append(
                    {
                        "group": g,
                        "name": "(setup)",
                        "status": "error",
                        "error": f"{type(exc).__name__}: {str(exc)[:400]}",
                    }
                )
    result["checks"] = chk.rows
    result["seconds"] = round(time.monotonic() - budget.start, 1)
    Path(a.json).write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(table(chk.rows))
    print(f"{len(chk.rows)} checks in {result['seconds']} s; JSON: {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
