"""`locate` on the synthetic world with a trained demo checkpoint (issue 6's end-to-end check).

Training the demo takes minutes on 2 cores, so this runs only when ``GEOKIT_DEMO_RUN`` names a
finished ``geokit demo`` (or ``geokit train``) folder on the synthetic dataset, e.g.::

    GEOKIT_DEMO_RUN=runs/demo pytest tests/test_locate_synthetic.py
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

RUN = os.environ.get("GEOKIT_DEMO_RUN")


@pytest.mark.slow
@pytest.mark.skipif(not RUN, reason="set GEOKIT_DEMO_RUN to a trained synthetic demo run folder")
def test_locate_finds_the_true_tile_for_most_synthetic_test_photos(tmp_path):
    from geokit import config
    from geokit.index import IndexSpec, build_from_checkpoint, dataset_references
    from geokit.locate import Localizer
    from geokit.registry import create

    run = Path(RUN)
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
