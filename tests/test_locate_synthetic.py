"""`locate` on the synthetic world with a trained demo checkpoint (issue 6's end-to-end check).

The test trains the shipped demo itself (several minutes on 2 cores: the longest test of the
suite, and the only one that checks a real training run localises photos). To reuse a finished
``geokit demo`` (or ``geokit train``) folder on the synthetic dataset instead::

    GEOKIT_DEMO_RUN=runs/demo pytest tests/test_locate_synthetic.py
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest

RUN = os.environ.get("GEOKIT_DEMO_RUN")


class _ToTerminal(logging.Handler):
    """geokit's log lines (training steps with rate and time left) on pytest's terminal, past
    its output capture, at most one every ``every`` seconds: the minutes of this test are not
    silent in ``make test``."""

    def __init__(self, config: pytest.Config, every: float = 20.0) -> None:
        super().__init__(logging.INFO)
        self.capture = config.pluginmanager.getplugin("capturemanager")
        self.reporter = config.pluginmanager.getplugin("terminalreporter")
        self.every, self.last = every, -float("inf")

    def say(self, text: str) -> None:
        if self.reporter is None:
            return
        with self.capture.global_and_fixture_disabled() if self.capture else contextlib.nullcontext():
            self.reporter.write_line(f"[test_locate_synthetic] {text}")

    def emit(self, record: logging.LogRecord) -> None:
        now = time.monotonic()
        if now - self.last >= self.every or record.levelno >= logging.WARNING:
            self.last = now
            self.say(record.getMessage())


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Path:
    if RUN:
        return Path(RUN)
    from click.testing import CliRunner

    from geokit.cli import _load_plugin_commands, cli
    from geokit.runtime import log

    if "demo" not in cli.commands:
        _load_plugin_commands()
    tmp = tmp_path_factory.mktemp("demo")
    out = tmp / "run"
    old = os.environ.get("GEOKIT_CACHE")
    os.environ["GEOKIT_CACHE"] = str(tmp / "cache")
    tell = _ToTerminal(pytestconfig)
    tell.say(
        "training the shipped demo for this test (several minutes on 2 cores; "
        "GEOKIT_DEMO_RUN=runs/demo reuses a finished run)"
    )
    log.addHandler(tell)
    try:
        res = CliRunner().invoke(cli, ["demo", "--output", str(out)], catch_exceptions=False)
    finally:
        log.removeHandler(tell)
        if old is None:
            del os.environ["GEOKIT_CACHE"]
        else:
            os.environ["GEOKIT_CACHE"] = old
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.slow
def test_locate_finds_the_true_tile_for_most_synthetic_test_photos(demo_run: Path, tmp_path: Path, monkeypatch):
    from geokit import config
    from geokit.index import IndexSpec, build_from_checkpoint, dataset_references
    from geokit.registry import create
    from geokit.retrieval.locate import Localizer

    run = demo_run
    if not RUN:
        monkeypatch.setenv("GEOKIT_CACHE", str(run.parent / "cache"))
    cfg = config.load(run / "config.yaml")
    assert cfg.names["dataset"] == "synthetic", "GEOKIT_DEMO_RUN must be a run on the synthetic world"
    refs = dataset_references(run / "config.yaml")
    build_from_checkpoint(run / "model.safetensors", refs, tmp_path / "x.index", IndexSpec("flat"), show=False)
    ds = create("dataset", "synthetic", cfg.dataset)
    es = ds.eval_set(ds.check_split(cfg.eval.split))
    results = Localizer(tmp_path / "x.index").locate(list(es.query_paths), k=10)
    truth = np.asarray(es.positives())
    top1 = 100 * np.mean([r.best.index == t for r, t in zip(results, truth)])
    assert top1 > 50, f"true tile first for {top1:.1f}% of the synthetic test photos"
    metrics = run / "metrics.json"
    if metrics.is_file():  # locate and evaluate share the embedding and retrieval path
        r1 = json.loads(metrics.read_text())["R@1"]
        assert abs(top1 - r1) <= 100 / len(truth) + 1e-9, (top1, r1)
    with_gps = [r for r in results if r.best.lat is not None]
    assert len(with_gps) == len(results)
