"""Samplers gps and dss: conformance, hand-built neighbour cases, DDP slicing, resume."""

from __future__ import annotations

import numpy as np
import pytest

from geokit.checkpoint import load_state, save_state
from geokit.data import TrainSet
from geokit.errors import GeokitError
from geokit.registry import create
from geokit.sampling import EpochContext, TrainEmbeddings, rank_slice
from geokit.testing import check_sampler, synthetic_train_set
from geokit_plugins.samplers._neighbour_batches import build_neighbour_batches, resolve_depth
from geokit_plugins.samplers.dss import mine_neighbours
from geokit_plugins.samplers.gps import gps_neighbours

EARTH_KM = 6371.0088


def haversine_km(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    la, lb = np.radians(a[..., 0]), np.radians(b[..., 0])
    dlat, dlon = lb - la, np.radians(b[..., 1] - a[..., 1])
    h = np.sin(dlat / 2) ** 2 + np.cos(la) * np.cos(lb) * np.sin(dlon / 2) ** 2
    return 2 * EARTH_KM * np.arcsin(np.sqrt(np.clip(h, 0, 1)))


def street(groups: int = 8, size: int = 8, seed: int = 0) -> TrainSet:
    """A 1-D street: ``groups`` blocks of ``size`` houses 10 m apart, blocks 1 km apart,
    listed in shuffled order so neighbours are not simply consecutive indices."""
    rng = np.random.default_rng(seed)
    metres = np.array([g * 1000.0 + h * 10.0 for g in range(groups) for h in range(size)])
    perm = rng.permutation(len(metres))
    lon = 11.0 + metres[perm] / (111_320.0 * np.cos(np.radians(48.0)))
    gps = np.c_[np.full(len(lon), 48.0), lon]
    n = len(lon)
    ts = TrainSet([f"q{i}" for i in range(n)], [f"r{i}" for i in range(n)], np.arange(n), reference_gps=gps)
    ts.block = (metres[perm] // 1000).astype(int)  # test-only attribute: the block of each reference
    return ts


def ctx_for(train: TrainSet, epoch: int = 1, batch_size: int = 8, embed=None, name: str = "street") -> EpochContext:
    kw = {} if embed is None else {"embed": embed}
    return EpochContext(epoch=epoch, epochs=12, batch_size=batch_size, seed=3, train=train, dataset_name=name, **kw)


def planted_embeddings(train: TrainSet, group_of_ref: np.ndarray, dim: int = 32, seed: int = 0) -> TrainEmbeddings:
    """References of one planted group are near-duplicates in embedding space; each query is
    its reference plus noise. DSS must put each group together."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(group_of_ref.max() + 1, dim))
    ref = centres[group_of_ref] + 0.05 * rng.normal(size=(len(group_of_ref), dim))
    qry = ref[train.pair_reference] + 0.01 * rng.normal(size=(len(train), dim))
    norm = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    return TrainEmbeddings(norm(qry), norm(ref))


# ------------------------------------------------------------------------------ conformance


@pytest.mark.parametrize(
    "options", [{}, {"select": 2, "range": 4}, {"hard_fraction": 0.5, "last_batch": "keep"}, {"backend": "faiss"}]
)
def test_gps_conformance(options):
    check_sampler("gps", options)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"zero_shot": True},
        {"every": 1, "select": 2, "range": 4},
        {"every": 2, "warm_start": "random", "hard_fraction": 0.5},
        {"every": 1, "exclude_conflicts": False, "last_batch": "keep"},
    ],
)
def test_dss_conformance(options):
    check_sampler("dss", options, epochs=4)


def test_conformance_many_pairs_per_reference():
    # VIGOR-like: several panoramas per satellite, plus semi-positive conflicts.
    train = synthetic_train_set(96, n_refs=40, conflicts=True, seed=5)
    check_sampler("gps", {"select": 3, "range": 6}, train=train)
    check_sampler("dss", {"every": 1, "select": 3, "range": 6}, train=train, epochs=3)


def test_default_depth_scales_with_batch():
    assert resolve_depth(None, None, 128) == (64, 128)
    assert resolve_depth(None, None, 32) == (16, 32)
    assert resolve_depth(10, 4, 32) == (10, 10)  # range is at least select


# ------------------------------------------------------------------------------ GPS


def test_gps_neighbours_are_geodesic_order():
    rng = np.random.default_rng(0)
    gps = np.c_[rng.uniform(-60, 70, 300), rng.uniform(-180, 180, 300)]
    table = gps_neighbours(gps, 10)
    assert table.shape == (300, 10)
    assert not (table == np.arange(300)[:, None]).any()
    d = haversine_km(gps[:, None, :], gps[table])
    assert (np.diff(d, axis=1) >= -1e-9).all(), "neighbours not in increasing great-circle distance"
    full = haversine_km(gps[:, None, :], gps[None, :, :])
    np.fill_diagonal(full, np.inf)
    np.testing.assert_allclose(np.sort(full, axis=1)[:, :10], d, rtol=1e-9, atol=1e-9)


def test_gps_no_degree_radian_aliasing():
    # The original fed degrees to a radians formula: points 2π degrees of longitude apart
    # (≈535 km at 40°N) looked like the same place. True geodesic order puts the 8.5 km one first.
    gps = np.array([[40.0, 0.0], [40.0, 2 * np.pi], [40.0, 0.1]])
    assert haversine_km(gps[0], gps[1]) > 500 and haversine_km(gps[0], gps[2]) < 9
    table = gps_neighbours(gps, 2)
    assert table[0, 0] == 2  # (40, 0.1) is 8.5 km away, (40, 6.28) is 535 km away


def test_gps_street_groups_are_blocks():
    train = street()
    table = gps_neighbours(train.reference_gps, 7)
    assert (train.block[table] == train.block[:, None]).all(), "a house's 7 nearest are its block mates"
    sampler = create("sampler", "gps", {"select": 7, "range": 7})
    batches = sampler.batches(ctx_for(train))
    assert len(batches) == 8
    for b in batches:
        assert len(set(train.block[train.pair_reference[b]].tolist())) == 1, "a batch mixes street blocks"


def test_gps_hard_fraction_mixes_random_items():
    train = street(groups=16, size=8)

    def same_block_share(options):
        bs = create("sampler", "gps", options).batches(ctx_for(train, batch_size=8))
        blocks = [train.block[train.pair_reference[b]] for b in bs]
        return np.mean([np.max(np.bincount(x)) / len(x) for x in blocks])

    full, half, none = (same_block_share({"select": 7, "range": 7, "hard_fraction": f}) for f in (1.0, 0.5, 0.0))
    assert full == 1.0
    assert 0.4 <= half < 0.8
    assert none < 0.4


def test_gps_without_gps_errors_or_falls_back():
    train = synthetic_train_set(32, gps=False)
    with pytest.raises(GeokitError, match="dataset 'nogps'.*no reference GPS"):
        create("sampler", "gps").batches(ctx_for(train, name="nogps"))
    batches = create("sampler", "gps", {"fallback": "random"}).batches(ctx_for(train, name="nogps"))
    assert sum(len(b) for b in batches) == 32
    check_sampler("gps", {"fallback": "random"}, train=train)


def test_gps_bad_coordinates_name_the_dataset():
    train = street()
    train.reference_gps[3] = [123.0, 4.0]
    with pytest.raises(GeokitError, match="dataset 'street'.*row 3"):
        create("sampler", "gps").batches(ctx_for(train))


# ------------------------------------------------------------------------------ DSS


def test_mine_neighbours_matches_dense_and_drops_own_and_conflicts():
    rng = np.random.default_rng(2)
    q = rng.normal(size=(50, 8)).astype(np.float32)
    r = rng.normal(size=(30, 8)).astype(np.float32)
    pair_ref = rng.integers(0, 30, 50)
    conflicts = np.full((50, 2), -1)
    conflicts[:, 0] = (pair_ref + 1) % 30
    lists = mine_neighbours(q, r, pair_ref, 10, conflicts=conflicts)
    qn, rn = q / np.linalg.norm(q, axis=1, keepdims=True), r / np.linalg.norm(r, axis=1, keepdims=True)
    dense = qn @ rn.T
    for i in range(50):
        order = [j for j in np.argsort(-dense[i], kind="stable") if j != pair_ref[i] and j != conflicts[i, 0]]
        assert lists[i].tolist() == order[:10]
    assert lists.dtype == np.int32


def test_dss_groups_planted_confusers():
    rng = np.random.default_rng(4)
    n_groups, size = 12, 8
    group_of_ref = rng.permutation(np.repeat(np.arange(n_groups), size))
    n = len(group_of_ref)
    train = TrainSet([f"q{i}" for i in range(n)], [f"r{i}" for i in range(n)], np.arange(n), reference_gps=None)
    emb = planted_embeddings(train, group_of_ref)
    calls = []

    def embed():
        calls.append(1)
        return emb

    sampler = create("sampler", "dss", {"zero_shot": True, "select": 7, "range": 7})
    batches = sampler.batches(ctx_for(train, embed=embed))
    assert calls == [1]
    assert len(batches) == n_groups
    for b in batches:
        assert len(set(group_of_ref[train.pair_reference[b]].tolist())) == 1, "planted confusers were split"
    # random batches (warm start on a dataset without GPS) do not group them
    warm = create("sampler", "dss", {"select": 7, "range": 7}).batches(ctx_for(train, embed=embed))
    assert len(calls) == 1
    assert np.mean([len(set(group_of_ref[b].tolist())) for b in warm]) > 3


def test_dss_schedule():
    train = synthetic_train_set(64, n_refs=48)
    emb = planted_embeddings(train, np.arange(48) % 6)

    def mined(options, epochs=10):
        s = create("sampler", "dss", options)
        out = []
        for e in range(1, epochs + 1):
            calls = []
            s.batches(ctx_for(train, epoch=e, embed=lambda: (calls.append(1), emb)[1]))
            if calls:
                out.append(e)
        return out

    assert mined({}) == [5, 9]  # Sample4Geo: GPS for epochs 1-4, re-mined every 4
    assert mined({"zero_shot": True}) == [1, 5, 9]
    assert mined({"every": 2}) == [3, 5, 7, 9]
    assert mined({"every": 1}, 3) == [2, 3]


def test_dss_warm_start_default_follows_gps():
    with_gps = create("sampler", "dss")
    with_gps.batches(ctx_for(synthetic_train_set(32)))
    assert with_gps.state_dict()["warm_start"] == "gps"
    no_gps = create("sampler", "dss")
    no_gps.batches(ctx_for(synthetic_train_set(32, gps=False)))
    assert no_gps.state_dict()["warm_start"] == "random"
    with pytest.raises(GeokitError, match="warm_start=dss"):
        create("sampler", "dss", {"warm_start": "dss"})


# ------------------------------------------------------------------------------ DDP, resume, scale


@pytest.mark.parametrize("name,options", [("gps", {"select": 3, "range": 6}), ("dss", {"zero_shot": True})])
def test_rank_slices_partition_global_batches(name, options):
    train = synthetic_train_set(100, n_refs=80, conflicts=True)
    emb = planted_embeddings(train, np.arange(80) % 10)
    batches = create("sampler", name, options).batches(ctx_for(train, batch_size=12, embed=lambda: emb))
    for world in (1, 2, 3, 4, 5):
        seen: list[int] = []
        for b in batches:
            slices = [rank_slice(b, r, world) for r in range(world)]
            assert np.array_equal(np.concatenate(slices), b), "rank slices do not rebuild the global batch"
            assert max(map(len, slices)) - min(map(len, slices)) <= 1
            seen.extend(np.concatenate(slices).tolist())
        assert len(seen) == len(set(seen)) == sum(map(len, batches)), "a pair lost or duplicated across ranks"


def test_dss_resume_round_trip_gives_identical_batches(tmp_path):
    train = synthetic_train_set(120, n_refs=90, conflicts=True)
    rng = np.random.default_rng(9)
    groups = [rng.integers(0, 15, 90) for _ in range(13)]

    def ctx(epoch):  # the "model" after epoch e-1 embeds differently from the one after e-2
        emb = planted_embeddings(train, groups[epoch], seed=epoch)
        return ctx_for(train, epoch=epoch, batch_size=10, embed=lambda: emb)

    options = {"every": 2, "select": 4, "range": 8}
    straight = create("sampler", "dss", options)
    ref = [straight.batches(ctx(e)) for e in range(1, 9)]
    for stop in (1, 2, 3, 4):  # resume after epoch `stop`, including right after a mining
        first = create("sampler", "dss", options)
        for e in range(1, stop + 1):
            first.batches(ctx(e))
        save_state(tmp_path / "s.safetensors", {"sampler": first.state_dict()})
        resumed = create("sampler", "dss", options)
        resumed.load_state_dict(load_state(tmp_path / "s.safetensors")["sampler"])
        for e in range(stop + 1, 9):
            got = resumed.batches(ctx(e))
            assert len(got) == len(ref[e - 1]) and all(np.array_equal(a, b) for a, b in zip(got, ref[e - 1])), (
                f"resume after epoch {stop}: epoch {e} differs"
            )


def test_gps_resume_round_trip(tmp_path):
    train = street()
    a = create("sampler", "gps", {"select": 3})
    want = a.batches(ctx_for(train, epoch=2))
    save_state(tmp_path / "s.safetensors", {"sampler": a.state_dict()})
    b = create("sampler", "gps", {"select": 3})
    b.load_state_dict(load_state(tmp_path / "s.safetensors")["sampler"])
    assert all(np.array_equal(x, y) for x, y in zip(want, b.batches(ctx_for(train, epoch=2))))


def test_builder_keeps_every_pair_with_keep_policy_and_scales():
    rng = np.random.default_rng(0)
    n = 20_000
    train = TrainSet([""] * n, [""] * n, np.arange(n))
    table = rng.integers(0, n, size=(n, 16))
    import time

    t = time.perf_counter()
    batches = build_neighbour_batches(train, 64, table, rng, select=8, range_=16, last_batch="keep")
    assert time.perf_counter() - t < 10
    flat = np.concatenate(batches)
    assert len(flat) == len(set(flat.tolist())) == n


# ------------------------------------------------------------------------------ through the engine


def test_train_end_to_end(tmp_path, monkeypatch):
    """GPS warm start for epoch 1, then DSS mined with the engine's real ctx.embed() before
    epoch 2; the mined lists land in the resume state."""
    sampler = {"name": "dss", "every": 1, "select": 3, "range": 6, "hard_fraction": 0.5}
    import torch

    from geokit.config import resolve
    from geokit.engine import train
    from geokit.testing import make_pairs_dataset, tiny_config

    monkeypatch.setenv("GEOKIT_PROGRESS", "0")
    threads = torch.get_num_threads()
    root = make_pairs_dataset(tmp_path / "data", n_train=16, n_test=4)
    cfg = resolve(tiny_config(root, sampler=sampler, train={"epochs": 2, "batch_size": 8}))
    try:
        result = train(cfg, tmp_path / "run", show=False)
    finally:
        torch.set_num_threads(threads)
    assert result.epochs_run == 2
    state = load_state(next((tmp_path / "run").glob("*state*.safetensors")))
    assert state["sampler"]["mined_epoch"] == 2 and state["sampler"]["warm_start"] == "gps"
    assert state["sampler"]["lists"].shape == (16, 6)
