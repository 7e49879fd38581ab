"""Sampler fidelity: geokit's neighbour batches against the released Sample4Geo builder.

Issue 12, rows 1 and 2. Metadata only (no images, no model): every statistic is a property of
the batches of one epoch.

- **walk** (row 2): GPS neighbour lists of a CVUSA-size training set (35,532 references spread
  uniformly over the contiguous US) and DSS-like lists (nearest neighbours in a 16-d random
  embedding, which are less reciprocal than geographic ones). Compared: the released builder
  (:func:`released_batches`, written from its description in the shared reference notes,
  sample4geo.md §4b), geokit ``walk: skip`` (the recipe) and ``walk: prefilter`` (geokit's
  earlier walk). Reported: anchors per batch, and batch-mates inside an item's own top-128
  (whole epoch, and the last 10 % of batches).
- **vigor** (row 1): a VIGOR-style world (:func:`vigor_world`): a grid of overlapping tiles
  (stride = half a tile), panoramas in the central quarter of their positive tile, the three
  other tiles covering a panorama its semi-positives. Compared: the released builder, geokit
  with ``semi_positive_conflicts: false`` (the recipe) and ``true`` (geokit's earlier rule).
  Reported: share of batch items with one of their own semi-positives in the batch as a
  negative, pairs dropped per epoch, GPS batch-mates inside the own top-128.

    .venv/bin/python benchmarks/samplers_fidelity.py                 # both, 3 epochs (seeds) each
    .venv/bin/python benchmarks/samplers_fidelity.py --parts walk --epochs 1 --n 8000

``tests/test_fidelity.py`` imports the helpers below and pins smaller versions of both.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# ------------------------------------------------------------------------------ the released builder


def released_batches(
    pair_ref: np.ndarray, table: np.ndarray, batch_size: int, select: int, range_: int, seed: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """The released builder, from its description (sample4geo.md §4b), for one epoch.

    Units are training pairs; ``table`` rows are per *reference* (GPS) — for per-pair lists pass
    ``pair_ref = arange(N)`` with a one-pair-per-reference set. Pairs are popped from a shuffled
    pool; a used pair is dropped, a pair whose reference is already in the open batch goes back
    to the end of the pool; 1024 failures in a row end the epoch. An accepted anchor walks
    ``select // 2`` nearest + ``select // 2`` random candidates from its first ``range_``
    entries, skipping references already in the batch or without an unused pair; a candidate
    reference brings one of its unused pairs at random. The partial last batch is dropped.

    Returns the batches and an ``(N,)`` bool array marking the pairs that joined as anchors.
    """
    rnd = random.Random(seed)
    n = len(pair_ref)
    ref = pair_ref.tolist()
    unused: dict[int, list[int]] = {}
    for i, r in enumerate(ref):
        unused.setdefault(r, []).append(i)
    pool = deque(rnd.sample(range(n), n))
    half = select // 2
    used = bytearray(n)
    anchor = np.zeros(n, dtype=bool)
    batches: list[np.ndarray] = []
    cur: list[int] = []
    refs_in: set[int] = set()
    fails = 0

    def put(i: int) -> None:
        cur.append(i)
        refs_in.add(ref[i])
        used[i] = 1
        unused[ref[i]].remove(i)

    while pool and fails < 1024:
        i = pool.popleft()
        if used[i] or ref[i] in refs_in:
            if not used[i]:
                pool.append(i)
            fails += 1
            continue
        fails = 0
        put(i)
        anchor[i] = True
        row = [int(c) for c in table[ref[i]][:range_] if c >= 0]
        far = row[half:]
        rnd.shuffle(far)
        for c in row[:half] + far[:half]:
            if len(cur) >= batch_size:
                break
            if c not in refs_in and unused.get(c):
                put(rnd.choice(unused[c]))
        if len(cur) >= batch_size:
            batches.append(np.asarray(cur, dtype=np.int64))
            cur, refs_in = [], set()
    return batches, anchor


# ------------------------------------------------------------------------------ statistics


def anchors_per_batch(batches: list[np.ndarray], anchor: np.ndarray) -> float:
    return float(np.mean([anchor[b].sum() for b in batches]))


def mates_in_own_list(
    batches: list[np.ndarray], pair_ref: np.ndarray, table: np.ndarray, depth: int = 128, tail: float = 1.0
) -> float:
    """Mean over batch items of how many batch-mates have a reference in the item's own
    top-``depth`` list; ``tail`` < 1 uses only the last share of the epoch's batches."""
    use = batches[int(len(batches) * (1 - tail)) :] if tail < 1 else batches
    counts = []
    for b in use:
        refs = pair_ref[b]
        lists = table[refs, :depth]
        counts.append(np.isin(lists, refs).sum(1))
    return float(np.concatenate(counts).mean())


def semi_positive_share(batches: list[np.ndarray], pair_ref: np.ndarray, semi_refs: np.ndarray) -> float:
    """Share of batch items with one of their own semi-positive references in the batch
    (another item's positive), i.e. trained as a negative."""
    hit = []
    for b in batches:
        refs = pair_ref[b]
        semi = semi_refs[b]
        hit.append(np.isin(semi, refs).any(1))
    return float(np.concatenate(hit).mean())


# ------------------------------------------------------------------------------ worlds


def us_points(n: int, seed: int = 0) -> np.ndarray:
    """``n`` points uniform in the contiguous-US box (as in benchmarks/samplers_cost.py)."""
    rng = np.random.default_rng(seed)
    return np.c_[rng.uniform(25, 49, n), rng.uniform(-125, -67, n)]


def dss_like_table(n: int, k: int, seed: int = 0, dim: int = 16) -> np.ndarray:
    """Per-pair lists: nearest neighbours of random points in ``dim`` dimensions (own excluded)."""
    from scipy.spatial import cKDTree

    x = np.random.default_rng(seed).normal(size=(n, dim))
    idx = cKDTree(x).query(x, k=k + 1, workers=-1)[1]
    return idx[:, 1:].astype(np.int64)


def vigor_world(side: int = 200, seed: int = 0, p_positive: float = 0.5, p_two: float = 0.2) -> dict:
    """A VIGOR-style world on a ``side``×``side`` grid of tiles with stride half a tile.

    Each location is covered by four tiles; the positive is the one whose central quarter holds
    the panorama, the other three are its semi-positives (VIGOR's definition). A share
    ``p_positive`` of tiles are some panorama's positive, ``p_two`` of those have two panoramas
    (VIGOR has 1-2 per tile; the defaults give ~1.2 panoramas per positive tile and half the
    tiles positive, about VIGOR's same-area training split). Returns tile ``gps`` (lat, lon), panorama
    ``labels`` ``(N, 4)`` global tile indices (positive, 3 semi-positives).
    """
    rng = np.random.default_rng(seed)
    stride_m = 36.0  # VIGOR tiles cover ~72 m; neighbouring tiles overlap by half
    gy, gx = np.divmod(np.arange(side * side), side)
    lat0, lon0 = 40.7, -74.0
    gps = np.c_[lat0 + gy * stride_m / 111_320.0, lon0 + gx * stride_m / (111_320.0 * np.cos(np.radians(lat0)))]
    # positives: interior tiles only, so that all four covering tiles exist
    interior = np.flatnonzero((gy > 0) & (gy < side - 1) & (gx > 0) & (gx < side - 1))
    pos = interior[rng.random(len(interior)) < p_positive]
    pos = np.concatenate([pos, pos[rng.random(len(pos)) < p_two]])
    # panorama offset inside the central quarter: its sign picks the three other covering tiles
    sy = np.where(rng.random(len(pos)) < 0.5, -1, 1)
    sx = np.where(rng.random(len(pos)) < 0.5, -1, 1)
    semi = np.c_[pos + sy * side, pos + sx, pos + sy * side + sx]
    labels = np.c_[pos, semi]
    return {"gps": gps, "labels": labels[rng.permutation(len(labels))]}


def vigor_train_set(world: dict, semi_positive_conflicts: bool):
    """The world's training set, built by the vigor plugin's own code path."""
    from geokit_plugins.datasets.vigor import train_set_from_labels

    n_tiles = len(world["gps"])
    return train_set_from_labels(
        [f"p{i}" for i in range(len(world["labels"]))],
        [f"t{j}" for j in range(n_tiles)],
        world["labels"],
        world["gps"],
        semi_positive_conflicts=semi_positive_conflicts,
    )


def semi_refs_of(train, labels: np.ndarray) -> np.ndarray:
    """``(N, 3)`` training-reference indices of each pair's semi-positives (−1: not a reference)."""
    refs = np.unique(labels[:, 0])
    to_ref = np.full(labels.max() + 2, -1, dtype=np.int64)
    to_ref[refs] = np.arange(len(refs))
    out = to_ref[labels[:, 1:]]
    assert np.array_equal(to_ref[labels[:, 0]], train.pair_reference)
    return out


# ------------------------------------------------------------------------------ runs


def geokit_batches(
    train, table, key_of_pair, seed: int, walk: str, batch_size: int = 128, select: int = 64, range_: int = 128
) -> tuple[list[np.ndarray], np.ndarray]:
    from geokit_plugins.samplers._neighbour_batches import build_neighbour_batches

    stats: dict = {}
    batches = build_neighbour_batches(
        train,
        batch_size,
        table,
        np.random.default_rng([seed, 1]),
        key_of_pair=key_of_pair,
        select=select,
        range_=range_,
        walk=walk,
        stats=stats,
    )
    return batches, stats["anchor"]


def walk_part(n: int, epochs: int) -> list[dict]:
    from geokit.data import TrainSet
    from geokit_plugins.samplers.gps import gps_neighbours

    rows = []
    train = TrainSet([""] * n, [""] * n, np.arange(n))
    for lists, table in (
        ("GPS", gps_neighbours(us_points(n), 128).astype(np.int64)),
        ("DSS-like", dss_like_table(n, 128)),
    ):
        for method in ("released", "skip", "prefilter"):
            a, m, late, secs = [], [], [], []
            for seed in range(epochs):
                t = time.perf_counter()
                if method == "released":
                    batches, anchor = released_batches(np.arange(n), table, 128, 64, 128, seed)
                else:
                    batches, anchor = geokit_batches(train, table, None, seed, method)
                secs.append(time.perf_counter() - t)
                a.append(anchors_per_batch(batches, anchor))
                m.append(mates_in_own_list(batches, np.arange(n), table))
                late.append(mates_in_own_list(batches, np.arange(n), table, tail=0.1))
            rows.append(
                {
                    "lists": lists,
                    "method": method,
                    "anchors/batch": np.mean(a),
                    "mates in own top-128": np.mean(m),
                    "same, last 10 %": np.mean(late),
                    "s/epoch": np.median(secs),
                }
            )
    return rows


def vigor_part(side: int, epochs: int) -> list[dict]:
    from geokit_plugins.samplers.gps import gps_neighbours

    world = vigor_world(side)
    rows = []
    for method in ("released", "conflicts off (recipe)", "conflicts on"):
        train = vigor_train_set(world, semi_positive_conflicts=method == "conflicts on")
        table = gps_neighbours(train.reference_gps, 128).astype(np.int64)
        semi = semi_refs_of(train, world["labels"])
        share, dropped, mates = [], [], []
        for seed in range(epochs):
            if method == "released":
                batches, _ = released_batches(train.pair_reference, table, 128, 64, 128, seed)
            else:
                batches, _ = geokit_batches(train, table, train.pair_reference, seed, "skip")
            share.append(semi_positive_share(batches, train.pair_reference, semi))
            dropped.append(len(train) - sum(map(len, batches)))
            mates.append(mates_in_own_list(batches, train.pair_reference, table))
        rows.append(
            {
                "method": method,
                "pairs": len(train),
                "references": len(train.reference_paths),
                "items with a semi-positive in batch": np.mean(share),
                "pairs dropped/epoch": np.mean(dropped),
                "GPS mates in own top-128": np.mean(mates),
            }
        )
    return rows


def show(rows: list[dict]) -> None:
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in r.values()) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", nargs="+", default=["walk", "vigor"], choices=["walk", "vigor"])
    ap.add_argument("--n", type=int, default=35_532, help="training pairs of the walk part (CVUSA: 35,532)")
    ap.add_argument("--side", type=int, default=200, help="tiles per side of the VIGOR-style world")
    ap.add_argument("--epochs", type=int, default=3, help="epochs (seeds) averaged")
    args = ap.parse_args()
    if "walk" in args.parts:
        print(f"## walk: {args.n} pairs, batch 128, select 64, range 128, {args.epochs} epochs\n")
        show(walk_part(args.n, args.epochs))
        print()
    if "vigor" in args.parts:
        print(
            f"## vigor: {args.side}x{args.side} tiles, GPS lists, batch 128, select 64, range 128, "
            f"{args.epochs} epochs\n"
        )
        show(vigor_part(args.side, args.epochs))


if __name__ == "__main__":
    main()
