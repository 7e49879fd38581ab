"""The conformance kit: checks any component runs in its own tests, plus tiny generated data.

Third-party plugin tests::

    from geokit.testing import check_sampler
    def test_my_sampler():
        check_sampler("my_sampler")            # by registered name
        check_sampler(MySampler(MyOptions()))  # or an instance

Every check raises ``AssertionError`` with a message saying which rule broke.
"""
from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from geokit.data import CrossViewDataset, EvalSet, TrainSet
from geokit.registry import create
from geokit.sampling import EpochContext, TrainEmbeddings

# ------------------------------------------------------------------------------ tiny data


def make_pairs_dataset(root: str | Path, *, n_train: int = 48, n_test: int = 24, size: int = 32,
                       gps: bool = True, seed: int = 0, val: bool = False) -> Path:
    """Write a small learnable ``pairs`` dataset: each location is a random colour field; its
    reference is a north-up tile and its query a panorama strip derived from the same field."""
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    splits = {"train": n_train, "test": n_test, **({"val": n_test} if val else {})}
    for split, n in splits.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(n):
            base = rng.random((4, 4, 3))
            tile = np.kron(base, np.ones((size // 4, size // 4, 1)))
            tile = (255 * np.clip(tile + rng.normal(0, 0.03, tile.shape), 0, 1)).astype(np.uint8)
            pano = np.concatenate([np.rot90(tile, -k)[: size // 4] for k in range(4)], axis=1)
            pano = np.ascontiguousarray(np.repeat(pano, 2, axis=0))
            q, r = f"{split}/q{i:04d}.png", f"{split}/r{i:04d}.png"
            Image.fromarray(pano).save(root / q)
            Image.fromarray(tile).save(root / r)
            lat, lon = 48.0 + 0.001 * i, 11.0 + 0.0005 * (i % 7)
            rows.append([q, r] + ([f"{lat:.6f}", f"{lon:.6f}"] if gps else []))
        with open(root / f"{split}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["query", "reference"] + (["lat", "lon"] if gps else []))
            w.writerows(rows)
    return root


def tiny_config(root: str | Path, **sections: Any) -> dict[str, Any]:
    """A config dict that trains in seconds on :func:`make_pairs_dataset` data."""
    cfg: dict[str, Any] = {
        "seed": 0,
        "encoder": {"name": "convnext", "model": "convnext_atto", "pretrained": False},
        "loss": {"name": "infonce"},
        "sampler": {"name": "random"},
        "dataset": {"name": "pairs", "root": str(root), "query_size": [32, 128], "reference_size": [32, 32]},
        "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "workers": 0, "warmup_epochs": 0.5},
        "eval": {"batch_size": 16},
    }
    for key, value in sections.items():
        if isinstance(value, Mapping) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def synthetic_train_set(n: int = 64, *, n_refs: int | None = None, gps: bool = True,
                        conflicts: bool = False, seed: int = 0) -> TrainSet:
    """Metadata-only training set (no images) for sampler checks."""
    rng = np.random.default_rng(seed)
    n_refs = n_refs or n
    pair_ref = np.concatenate([np.arange(n_refs), rng.integers(0, n_refs, n - n_refs)]) if n > n_refs \
        else np.arange(n)
    conf = None
    if conflicts:
        conf = np.full((n, 2), -1, dtype=np.int64)
        conf[:, 0] = (pair_ref + 1) % n_refs
    return TrainSet([f"q{i}" for i in range(n)], [f"r{j}" for j in range(n_refs)], pair_ref,
                    reference_gps=np.c_[48 + rng.random(n_refs) * 0.1, 11 + rng.random(n_refs) * 0.1]
                    if gps else None, pair_conflicts=conf)


# ------------------------------------------------------------------------------ checks


def _build(kind: str, obj: Any, options: Mapping[str, Any] | None) -> Any:
    return create(kind, obj, options or {}) if isinstance(obj, str) else obj


def check_encoder(encoder: Any, options: Mapping[str, Any] | None = None, *,
                  sizes: tuple[tuple[int, int], ...] = ((32, 32), (32, 96)), seed: int = 0) -> None:
    """Output shape and dtype for each view size, gradients to every trainable parameter,
    determinism under a seed, and the ``embedding_dim``/``mean``/``std`` attributes."""
    import torch

    if isinstance(encoder, str):
        torch.manual_seed(seed)
        a = _build("encoder", encoder, options)
        torch.manual_seed(seed)
        b = _build("encoder", encoder, options)
    else:
        a = b = encoder
    for attr in ("embedding_dim", "mean", "std"):
        assert hasattr(a, attr), f"encoder has no '{attr}' attribute"
    assert len(a.mean) == 3 and len(a.std) == 3, "mean and std must be 3-tuples"
    d = int(a.embedding_dim)
    a.train()
    for h, w in sizes:
        x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed))
        y = a(x)
        assert tuple(y.shape) == (2, d), f"encoder output {tuple(y.shape)} for {h}x{w}, expected (2, {d})"
        assert y.dtype == torch.float32, f"encoder output dtype {y.dtype}, expected float32"
        assert torch.isfinite(y).all(), "encoder output is not finite"
    a.zero_grad()
    a(torch.randn(2, 3, *sizes[0])).pow(2).sum().backward()
    no_grad = [n for n, p in a.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters receive no gradient: {no_grad[:5]}"
    a.eval()
    b.eval()
    x = torch.randn(2, 3, *sizes[0])
    with torch.no_grad():
        assert torch.allclose(a(x), b(x)), "encoder is not deterministic under a seed"


def check_loss(loss: Any, options: Mapping[str, Any] | None = None, *, symmetric: bool | None = None,
               batch: int = 6, dim: int = 16) -> None:
    """Finite scalar, gradients reach both inputs, lower for matching pairs than for shuffled
    ones, and (when ``symmetric``) unchanged when the two views swap."""
    import torch

    fn = _build("loss", loss, options)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(batch, dim, generator=g, requires_grad=True)
    r = (q.detach() + 0.05 * torch.randn(batch, dim, generator=g)).requires_grad_(True)
    value = fn(q, r)
    assert value.ndim == 0, f"loss must be a scalar, got shape {tuple(value.shape)}"
    assert torch.isfinite(value), "loss is not finite"
    value.backward()
    assert q.grad is not None and q.grad.abs().sum() > 0, "no gradient reaches the query embeddings"
    assert r.grad is not None and r.grad.abs().sum() > 0, "no gradient reaches the reference embeddings"
    with torch.no_grad():
        shuffled = fn(q, r.roll(1, 0))
        assert fn(q, r) < shuffled, "loss is not lower for matching pairs than for mismatched ones"
        if symmetric:
            assert torch.allclose(fn(q, r), fn(r, q), atol=1e-6), "loss is not symmetric in its inputs"


def check_sampler(sampler: Any, options: Mapping[str, Any] | None = None, *,
                  train: TrainSet | None = None, batch_size: int = 8, epochs: int = 3,
                  embed: Any = None) -> None:
    """Valid indices, no reference (or declared conflict) twice in a batch, each pair at most once
    per epoch, the same batches for the same seed and epoch (also after a state round trip)."""
    train = train or synthetic_train_set(64, n_refs=48, conflicts=True)
    if embed is None:
        rng = np.random.default_rng(1)
        ref = rng.normal(size=(len(train.reference_paths), 8)).astype(np.float32)
        qry = ref[train.pair_reference] + 0.1 * rng.normal(size=(len(train), 8)).astype(np.float32)
        emb = TrainEmbeddings(qry / np.linalg.norm(qry, axis=1, keepdims=True),
                              ref / np.linalg.norm(ref, axis=1, keepdims=True))
        embed = lambda: emb  # noqa: E731

    def run(s: Any, epoch: int) -> list[np.ndarray]:
        ctx = EpochContext(epoch=epoch, epochs=epochs, batch_size=batch_size, seed=7, train=train, embed=embed)
        return [np.asarray(b) for b in s.batches(ctx)]

    a = _build("sampler", sampler, options)
    b = _build("sampler", sampler, options) if isinstance(sampler, str) else None
    for epoch in range(1, epochs + 1):
        state = a.state_dict()
        batches = run(a, epoch)
        assert batches, f"epoch {epoch}: no batches"
        seen: set[int] = set()
        for k, batch in enumerate(batches):
            assert batch.ndim == 1 and len(batch) >= 2, f"epoch {epoch} batch {k}: needs ≥2 pair indices"
            assert len(batch) <= batch_size, f"epoch {epoch} batch {k}: {len(batch)} > batch_size {batch_size}"
            assert ((batch >= 0) & (batch < len(train))).all(), f"epoch {epoch} batch {k}: index out of range"
            dup = seen.intersection(batch.tolist())
            assert not dup and len(set(batch.tolist())) == len(batch), \
                f"epoch {epoch}: pairs {sorted(dup)[:5]} used more than once"
            seen.update(batch.tolist())
            refs = train.pair_reference[batch]
            assert len(set(refs.tolist())) == len(refs), f"epoch {epoch} batch {k}: a reference appears twice"
            if train.pair_conflicts is not None:
                bad = set(train.pair_conflicts[batch].ravel().tolist()) & set(refs.tolist())
                assert not bad, f"epoch {epoch} batch {k}: conflicting references {sorted(bad)[:5]} share a batch"
        if b is not None:
            b.load_state_dict(state)
            again = run(b, epoch)
            assert len(again) == len(batches) and all(np.array_equal(x, y) for x, y in zip(batches, again)), \
                f"epoch {epoch}: different batches for the same seed, epoch and state"


def check_dataset(dataset: Any, options: Mapping[str, Any] | None = None, *, items: int = 3) -> None:
    """Train and eval sets are consistent; the first items load at the declared sizes; the
    training augmentation keeps shapes and is a function of its generator."""
    ds: CrossViewDataset = _build("dataset", dataset, options)
    tr = ds.train_set()
    assert isinstance(tr, TrainSet) and len(tr) > 0, "train_set() must return a non-empty TrainSet"
    for split in ds.splits:
        es = ds.eval_set(split)
        assert isinstance(es, EvalSet), f"eval_set({split!r}) must return an EvalSet"
        es.positives()  # every query has a true reference
        if es.semi_positives is not None:
            assert len(es.semi_positives) == len(es.query_paths), "one semi_positives row per query"
            assert es.semi_positives.max() < len(es.reference_paths), "semi_positives index out of range"
    for i in range(min(items, len(tr))):
        q = ds.load_image(tr.query_paths[i], ds.query_size)
        r = ds.load_image(tr.reference_paths[tr.pair_reference[i]], ds.reference_size)
        assert q.shape == (*ds.query_size, 3) and q.dtype == np.uint8, f"query {i}: shape {q.shape} {q.dtype}"
        assert r.shape == (*ds.reference_size, 3) and r.dtype == np.uint8, f"reference {i}: shape {r.shape}"
        a = ds.augment_pair(q.copy(), r.copy(), np.random.default_rng(i))
        b = ds.augment_pair(q.copy(), r.copy(), np.random.default_rng(i))
        assert a[0].shape == q.shape and a[1].shape == r.shape, "augment_pair changed an image's shape"
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]), \
            "augment_pair is not a function of its generator"
