"""Evaluation and index building over two gloo ranks under torchrun give what one process
gives (metrics, embeddings, index vectors), only rank 0 prints, and a rank that hangs makes
the other fail with a clear error after the timeout instead of waiting for ever."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import time

import numpy as np
import pytest
import yaml

from geokit.config import resolve
from geokit.testing import QUIET_ENV, run_torchrun, tiny_config

pytestmark = pytest.mark.slow  # torchrun runs (about 25 s each)


@pytest.fixture(autouse=True)
def _keep_threads():
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, pairs_root):
    """A tiny config (24 test pairs: 12 per rank) and a checkpoint of its random-init encoder.
    The queries are cut to a 90° window at an azimuth drawn per image (fixed in evaluation), so
    rank 1 must draw with its images' global positions to match one process."""
    import torch

    from geokit.model import build

    tmp = tmp_path_factory.mktemp("evalddp")
    cfg = tiny_config(
        pairs_root, train={"threads": 1}, eval={"batch_size": 5}, transforms=[{"name": "limited_fov", "fov": 90}]
    )
    cfg_path = tmp / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    torch.manual_seed(3)
    parts = build(resolve(cfg))
    ckpt = tmp / "model.safetensors"
    parts.save(ckpt)
    return cfg, cfg_path, ckpt, tmp


def test_evaluate_under_torchrun_equals_one_process(setup, tmp_path):
    from safetensors.numpy import load_file

    from geokit.engine.evaluation import evaluate

    cfg, cfg_path, ckpt, _ = setup
    single = evaluate(resolve(cfg), ckpt, save_embeddings=tmp_path / "one.safetensors", show=False)
    proc = run_torchrun(
        [
            "evaluate",
            "--config",
            str(cfg_path),
            "--checkpoint",
            str(ckpt),
            "--output",
            str(tmp_path / "m.json"),
            "--save-embeddings",
            str(tmp_path / "two.safetensors"),
        ],
        timeout=240,
    )
    assert json.loads((tmp_path / "m.json").read_text()) == single.metrics
    assert proc.stdout.count("24 queries x 24 references") == 1, proc.stdout  # rank 0 alone prints the table
    one, two = load_file(tmp_path / "one.safetensors"), load_file(tmp_path / "two.safetensors")
    assert sorted(one) == sorted(two)
    assert len(two["query"]) == len(two["reference"]) == 24
    for k in one:
        np.testing.assert_allclose(two[k], one[k], rtol=0, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_index_build_under_torchrun_equals_one_process(setup, tmp_path, kind):
    """Every rank embeds its share of each chunk (chunk 10: shares of 5, and a last chunk of 4)
    and rank 0 writes: the index holds what one process builds."""
    from geokit.index import GeoIndex, IndexSpec, build_from_checkpoint, dataset_references

    _, cfg_path, ckpt, _ = setup
    extra = ["--nlist", "4", "--nprobe", "1"] if kind == "ivf" else []
    proc = run_torchrun(
        [
            "index",
            "build",
            "--checkpoint",
            str(ckpt),
            "--config",
            str(cfg_path),
            "--output",
            str(tmp_path / "two.index"),
            "--type",
            kind,
            "--chunk",
            "10",
            "--batch-size",
            "3",
            *extra,
        ],
        timeout=240,
    )
    assert proc.stdout.count("24 tiles") == 1, proc.stdout  # rank 0 alone reports
    assert not [p.name for p in tmp_path.iterdir() if p.name != "two.index"]  # no spool left behind
    spec = IndexSpec(kind, nlist=4, nprobe=1) if kind == "ivf" else IndexSpec(kind)
    one = build_from_checkpoint(
        ckpt, dataset_references(cfg_path), tmp_path / "one.index", spec, chunk=24, batch_size=7, show=False
    )
    two = GeoIndex.load(tmp_path / "two.index")
    assert two.paths == one.paths and len(two) == 24
    np.testing.assert_array_equal(two.latlon, one.latlon)
    assert two.meta["encoder_fingerprint"] == one.meta["encoder_fingerprint"]
    if kind == "flat":
        np.testing.assert_allclose(two.vectors, one.vectors, rtol=0, atol=1e-6)
    else:
        queries = np.random.default_rng(0).normal(size=(30, two.dim)).astype(np.float32)
        for ix in (one, two):
            assert ix.meta["params"]["train_size"] == 24
        s1, i1 = one.search(queries, 5)
        s2, i2 = two.search(queries, 5)
        np.testing.assert_array_equal(i2, i1)
        np.testing.assert_allclose(s2, s1, atol=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _hanging_rank(rank: int, port: int, cfg: dict, ckpt: str, out: mp.Queue) -> None:
    """Rank 1 'hangs' while embedding (a stuck file system, say); rank 0 must not wait for ever."""
    os.environ.update(
        QUIET_ENV, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    from geokit import embedding
    from geokit.config import resolve
    from geokit.engine.evaluation import evaluate

    if rank == 1:
        real = embedding.embed_paths

        def stuck(*a, **k):
            out.put((rank, "stuck", "", time.time()))
            time.sleep(60)
            return real(*a, **k)

        embedding.embed_paths = stuck
    try:
        evaluate(resolve(cfg), ckpt, show=False)
        out.put((rank, "ok", "", time.time()))
    except Exception as exc:  # noqa: BLE001 - any outcome goes back to the parent process
        out.put((rank, type(exc).__name__, str(exc), time.time()))


def test_a_hanging_rank_is_an_error_after_the_timeout(setup):
    cfg, _, ckpt, _ = setup
    cfg = dict(cfg, train={**cfg["train"], "dist_timeout": 4})
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_hanging_rank, args=(r, port, cfg, str(ckpt), out), daemon=True) for r in (0, 1)]
    for p in procs:
        p.start()
    try:
        got = [out.get(timeout=120) for _ in range(2)]
    finally:
        for p in procs:
            p.kill()
            p.join()
    assert got[0][:2] == (1, "stuck"), got
    rank, kind, msg, when = got[1]
    assert rank == 0 and kind == "DistributedError", got
    assert "rank 0 of 2" in msg and "timeout 4 s" in msg and "train.dist_timeout" in msg, msg
    assert when - got[0][3] < 30, (when - got[0][3], msg)  # the timeout, not rank 1's 60 s
