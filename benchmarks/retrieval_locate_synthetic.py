"""`geokit locate` on a trained run's test split: index the split's reference tiles with
``geokit index build --config`` (same code), locate every test query photo with
``geokit.Localizer``, and report how often the true tile comes first, the median distance of the
top-1 tile, the consensus rate, and the time per photo. For a flat index, top-1 must equal the
run's evaluation R@1 (``metrics.json``): locate and evaluate share the embedding and retrieval path.

    GEOKIT_CACHE=... .venv/bin/python benchmarks/retrieval_locate_synthetic.py --run runs/demo
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="run folder with config.yaml and model.safetensors")
    ap.add_argument("--type", default="flat", choices=["flat", "ivf", "ivfpq", "hnsw"])
    ap.add_argument("--split", default=None)
    ap.add_argument("--limit", type=int, default=0, help="locate only the first N test photos")
    args = ap.parse_args()

    from geokit import config
    from geokit.index import IndexSpec, build_from_checkpoint, dataset_references
    from geokit.locate import Localizer, haversine_m
    from geokit.registry import create

    run = Path(args.run)
    ckpt = run / "model.safetensors"
    refs = dataset_references(run / "config.yaml", split=args.split)
    cfg = config.load(run / "config.yaml")
    ds = create("dataset", cfg.names["dataset"], cfg.dataset)
    es = ds.eval_set(ds.check_split(args.split or cfg.eval.split))
    positives = es.positives()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        build_from_checkpoint(ckpt, refs, Path(tmp) / "x.index", IndexSpec(args.type), show=False)
        t_build = time.perf_counter() - t0
        loc = Localizer(Path(tmp) / "x.index", ckpt)
        photos = list(es.query_paths)[: args.limit or None]
        t0 = time.perf_counter()
        results = loc.locate(photos, k=10)
        t_locate = time.perf_counter() - t0
    truth = np.asarray(positives)[: len(photos)]
    top1 = np.mean([r.best.index == t for r, t in zip(results, truth)])
    top10 = np.mean([t in [c.index for c in r.candidates] for r, t in zip(results, truth)])
    out = {"run": str(run), "index": args.type, "references": len(refs.paths), "photos": len(photos),
           "true_tile_first_%": round(100 * top1, 2), "true_tile_in_top10_%": round(100 * top10, 2),
           "consensus_%": round(100 * np.mean([r.consensus is not None for r in results]), 1),
           "build_s": round(t_build, 1), "locate_ms_per_photo": round(1000 * t_locate / len(photos), 2)}
    if es.query_gps is not None:
        best = np.array([[r.best.lat, r.best.lon] for r in results], dtype=float)
        err = haversine_m(best[:, 0], best[:, 1], es.query_gps[: len(photos), 0], es.query_gps[: len(photos), 1])
        out["median_top1_error_m"] = round(float(np.median(err)), 1)
    metrics = run / "metrics.json"
    if metrics.is_file():
        out["evaluate_R@1"] = json.loads(metrics.read_text()).get("R@1")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
