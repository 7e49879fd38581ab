"""`geokit locate` on a trained run's test split: index the split's reference tiles with
``geokit index build --config`` (same code), locate every test query photo with
``geokit.Localizer``, and report how often the true tile comes first, the median distance of the
top-1 tile, the consensus rate, and the time per photo. For a flat index, top-1 must equal the
run's evaluation R@1 (``metrics.json``): locate and evaluate share the embedding and retrieval path.

``consensus`` compares, per top-k (5 and 10) and radius, geokit's consensus (the top-1 tile when
other candidates lie near it) with the method it replaced (the score-weighted centre of the
largest group of candidates within the radius of one of them, wherever it was) and with the top-1:
median error, share within 25 m, and how often each is more than 50 m worse than the top-1.

    GEOKIT_CACHE=... .venv/bin/python benchmarks/retrieval_locate_synthetic.py --run runs/demo
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def largest_group_centre(cands, radius_m):
    """The consensus before issue 16 (for comparison): the largest group of candidates within
    ``radius_m`` of one of them, centred at the score-weighted mean on the sphere."""
    import math

    from geokit.retrieval.locate import haversine_m

    lat = np.array([c.lat for c in cands])
    lon = np.array([c.lon for c in cands])
    score = np.array([c.score for c in cands])
    near = haversine_m(lat[:, None], lon[:, None], lat[None, :], lon[None, :]) <= radius_m
    size, weight = near.sum(1), (near * score[None, :]).sum(1)
    best = max(range(len(cands)), key=lambda i: (size[i], weight[i], -i))
    if size[best] < 2:
        return None
    m = np.flatnonzero(near[best])
    w = np.clip(score[m], 0, None) + 1e-6
    la, lo = np.radians(lat[m]), np.radians(lon[m])
    xyz = (w[:, None] * np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], 1)).sum(0)
    return math.degrees(math.atan2(xyz[2], math.hypot(xyz[0], xyz[1]))), math.degrees(math.atan2(xyz[1], xyz[0]))


def compare_consensus(results, truth_gps, ks=(5, 10), radii=(50.0, 100.0)):
    """Per (k, radius): top-1 vs geokit's consensus vs the largest-group centre."""
    from geokit.retrieval.locate import consensus, haversine_m

    top1 = np.array([[r.best.lat, r.best.lon] for r in results], dtype=float)
    e_top1 = haversine_m(top1[:, 0], top1[:, 1], truth_gps[:, 0], truth_gps[:, 1])

    def stats(err):
        return {
            "n": int(len(err)),
            "median_m": round(float(np.median(err)), 1) if len(err) else None,
            "within_25m_%": round(100 * float(np.mean(err <= 25)), 1) if len(err) else None,
        }

    rows = []
    for k in ks:
        for radius in radii:
            new, old = [], []
            for i, r in enumerate(results):
                cands = r.candidates[:k]
                c = consensus(cands, radius)
                if c is not None:
                    new.append((i, float(haversine_m(c.lat, c.lon, *truth_gps[i]))))
                g = largest_group_centre(cands, radius)
                if g is not None:
                    old.append((i, float(haversine_m(g[0], g[1], *truth_gps[i]))))
            row = {"k": k, "radius_m": radius, "photos": len(results), "top1_all": stats(e_top1)}
            for name, got in (("consensus", new), ("largest_group_centre", old)):
                idx = np.array([i for i, _ in got], dtype=int)
                err = np.array([e for _, e in got])
                row[name] = {
                    **stats(err),
                    "reported_%": round(100 * len(got) / len(results), 1),
                    "top1_on_same_photos": stats(e_top1[idx]),
                    "worse_than_top1_by_50m": int(np.sum(err > e_top1[idx] + 50)),
                }
            idx = np.array([i for i, _ in new], dtype=int)
            rest = np.setdiff1d(np.arange(len(results)), idx)
            row["top1_without_consensus"] = stats(e_top1[rest])
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="run folder with config.yaml and model.safetensors")
    ap.add_argument("--type", default="flat", choices=["flat", "ivf", "ivfpq", "hnsw"])
    ap.add_argument("--split", default=None)
    ap.add_argument("--limit", type=int, default=0, help="locate only the first N test photos")
    args = ap.parse_args()

    from geokit import config
    from geokit.index import IndexSpec, build_from_checkpoint, dataset_references
    from geokit.registry import create
    from geokit.retrieval.locate import Localizer, haversine_m

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
    out = {
        "run": str(run),
        "index": args.type,
        "references": len(refs.paths),
        "photos": len(photos),
        "true_tile_first_%": round(100 * top1, 2),
        "true_tile_in_top10_%": round(100 * top10, 2),
        "consensus_%": round(100 * np.mean([r.consensus is not None for r in results]), 1),
        "build_s": round(t_build, 1),
        "locate_ms_per_photo": round(1000 * t_locate / len(photos), 2),
    }
    if es.query_gps is not None:
        best = np.array([[r.best.lat, r.best.lon] for r in results], dtype=float)
        err = haversine_m(best[:, 0], best[:, 1], es.query_gps[: len(photos), 0], es.query_gps[: len(photos), 1])
        out["median_top1_error_m"] = round(float(np.median(err)), 1)
        out["consensus"] = compare_consensus(results, np.asarray(es.query_gps, float)[: len(photos)])
    metrics = run / "metrics.json"
    if metrics.is_file():
        out["evaluate_R@1"] = json.loads(metrics.read_text()).get("R@1")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
