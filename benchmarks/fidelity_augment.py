"""Augmentation and schedule fidelity against the released Sample4Geo code (issue 12, rows 3 and 6).

- **dropout**: share of the image that CoarseDropout and GridDropout blank out, per view size of
  the recipes, for ``dropout_geometry: released`` (albumentations 1.x geometry, as the released
  code) and ``relative`` (geokit's earlier albumentations 2.0 defaults). A white image goes
  through the single transform ``--draws`` times; the share of zero pixels is averaged.
- **schedule**: the learning rate per step of geokit (``geokit.engine.lr_at``: steps per epoch
  ``N // 128``, warm-up ``(step + 1) / warmup``) against the released code's (transformers'
  cosine-with-warm-up as it calls it: total ``ceil(N / 128) · epochs`` steps counted from the
  loader before the custom shuffle, warm-up ``step / warmup``, while only full batches run).
  Reported: the largest difference over the steps both run, as % of the peak lr, and where the
  released schedule stops (it never reaches 0).

    .venv/bin/python benchmarks/fidelity_augment.py
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VIEWS = [  # (what, (H, W), GridDropout ratio)
    ("CVUSA/CVACT panorama", (140, 768), 0.5),
    ("VIGOR panorama", (384, 768), 0.5),
    ("satellite tile (all)", (384, 384), 0.4),
    ("University-1652 drone", (384, 384), 0.4),
]

RUNS = [  # (recipe, training pairs, epochs, warm-up epochs)
    ("cvusa / cvact", 35_532, 40, 1.0),
    ("vigor-same", 52_609, 40, 1.0),
    ("vigor-cross", 51_520, 40, 1.0),
    ("university1652", 37_854, 1, 0.1),
]


def dropped_share(which: int, geometry: str, shape: tuple[int, int], ratio: float, draws: int) -> float:
    import albumentations as A

    from geokit.augment import dropout_choice

    t = A.Compose([dropout_choice(ratio, shape[0], geometry)[which]])  # type: ignore[arg-type]
    t.set_random_seed(0)
    img = np.full((*shape, 3), 255, np.uint8)
    return float(np.mean([(t(image=img)["image"][..., 0] == 0).mean() for _ in range(draws)]))


def released_lr(step: int, total: int, warmup: float, base: float) -> float:
    """transformers' get_cosine_schedule_with_warmup (0.5 cycles) at the step-th optimizer step
    (the scheduler is stepped after each optimizer step, so step 0 runs at lr 0)."""
    if step < warmup:
        return base * step / max(1.0, warmup)
    progress = (step - warmup) / max(1.0, total - warmup)
    return base * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def schedule_gap(n: int, epochs: int, warmup_epochs: float, batch: int = 128, base: float = 1e-3) -> dict:
    from geokit.engine import lr_at

    spe_geokit = max(n // batch, 1)
    total_g, warm_g = epochs * spe_geokit, int(round(warmup_epochs * spe_geokit))
    spe_loader = math.ceil(n / batch)  # len(DataLoader) before the first custom shuffle
    total_r, warm_r = spe_loader * epochs, spe_loader * warmup_epochs
    run = epochs * (n // batch)  # full batches only; the shuffle may drop a few more
    diff = [abs(lr_at(s, total_g, warm_g, base) - released_lr(s, total_r, warm_r, base)) for s in range(run)]
    after_warm = [d for s, d in enumerate(diff) if s >= max(warm_g, math.ceil(warm_r))]
    return {
        "steps run": run,
        "released total": total_r,
        "geokit total": total_g,
        "max |Δlr| % of peak": 100 * max(diff) / base,
        "max after warm-up %": 100 * max(after_warm) / base if after_warm else 0.0,
        "released last lr % of peak": 100 * released_lr(run - 1, total_r, warm_r, base) / base,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--draws", type=int, default=500)
    args = ap.parse_args()
    print(f"## dropout: share of the image blanked ({args.draws} draws each)\n")
    print("| view | H×W | Coarse released | Coarse relative | ratio | Grid released | Grid relative |")
    print("|---|---|---|---|---|---|---|")
    for what, shape, ratio in VIEWS:
        c = [dropped_share(1, g, shape, ratio, args.draws) for g in ("released", "relative")]
        g = [dropped_share(0, g, shape, ratio, args.draws) for g in ("released", "relative")]
        print(
            f"| {what} | {shape[0]}×{shape[1]} | {100 * c[0]:.1f} % | {100 * c[1]:.1f} % | "
            f"{c[1] / c[0]:.1f}× | {100 * g[0]:.1f} % | {100 * g[1]:.1f} % |"
        )
    print("\n## schedule: geokit vs the released code (batch 128, lr 1e-3)\n")
    rows = [{"recipe": name, **schedule_gap(n, e, w)} for name, n, e, w in RUNS]
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    # the ratio 0.4 vs 0.5 of University-1652 drone views (row 6): area of the released grid
    for ratio in (0.4, 0.5):
        print(
            f"\nUniversity-1652 drone GridDropout ratio {ratio}: "
            f"{100 * dropped_share(0, 'released', (384, 384), ratio, 5):.1f} % blanked"
        )


if __name__ == "__main__":
    main()
