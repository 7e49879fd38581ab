"""The conformance kit: checks any component runs in its own tests, plus tiny generated data.

Third-party plugin tests::

    from geokit.testing import check_sampler
    def test_my_sampler():
        check_sampler("my_sampler")            # by registered name
        check_sampler(MySampler(MyOptions()))  # or an instance

Every check raises ``AssertionError`` with a message saying which rule broke. Also here: tiny
generated data (:func:`make_pairs_dataset`, :func:`tiny_config`, :func:`synthetic_train_set`),
the reference batch packer (:class:`QueuePacker`) and the ``torchrun`` runner
(:func:`torchrun_command`, :func:`run_torchrun`), defined in ``geokit._testing_support``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from geokit._calls import accepts
from geokit._testing_support import (
    QUIET_ENV,
    QueuePacker,
    make_pairs_dataset,
    run_torchrun,
    synthetic_train_set,
    tiny_config,
    torchrun_command,
)
from geokit.data import CrossViewDataset, EvalSet, MatchTable, TrainSet
from geokit.sampling import StepContext, TrainEmbeddings, is_step_level

__all__ = [
    "QUIET_ENV",
    "QueuePacker",
    "check_dataset",
    "check_encoder",
    "check_loss",
    "check_match_table",
    "check_metric",
    "check_reranker",
    "check_sampler",
    "check_transform",
    "make_pairs_dataset",
    "run_torchrun",
    "synthetic_train_set",
    "test_context",
    "tiny_config",
    "torchrun_command",
]

# ------------------------------------------------------------------------------ checks


def test_context(
    kind: str = "encoder",
    *,
    embedding_dim: int | None = None,
    n_pairs: int = 64,
    sizes: tuple[tuple[int, int], tuple[int, int]] = ((32, 96), (32, 32)),
) -> Any:
    """A :class:`geokit.model.BuildContext` for building a component in a test, with a
    metadata-only training set of ``n_pairs`` pairs."""
    from geokit.model import BuildContext

    return BuildContext(
        kind,
        dataset_name="test",
        query_size=sizes[0],
        reference_size=sizes[1],
        embedding_dim=embedding_dim,
        _train=lambda: synthetic_train_set(n_pairs),
    )


def _build(kind: str, obj: Any, options: Mapping[str, Any] | None, context: Any = None) -> Any:
    from geokit.model import build_component

    if not isinstance(obj, str):
        return obj
    return build_component(kind, obj, options or {}, context if context is not None else test_context(kind))


def check_encoder(
    encoder: Any,
    options: Mapping[str, Any] | None = None,
    *,
    sizes: tuple[tuple[int, int], ...] = ((32, 32), (32, 96)),
    seed: int = 0,
) -> None:
    """Output shape and dtype for each view size, gradients to every trainable parameter,
    determinism under a seed, and the ``embedding_dim``/``mean``/``std`` attributes (3-tuples, or
    per-view mappings). An encoder whose ``forward`` takes ``view`` is checked through each view
    (a two-branch encoder passes: every parameter must get a gradient from one of the views)."""
    import torch

    from geokit.model import VIEWS, encode, view_norm

    if isinstance(encoder, str):
        torch.manual_seed(seed)
        a = _build("encoder", encoder, options)
        torch.manual_seed(seed)
        b = _build("encoder", encoder, options)
    else:
        a = b = encoder
    for attr in ("embedding_dim", "mean", "std"):
        assert hasattr(a, attr), f"encoder has no '{attr}' attribute"
    for view in VIEWS:
        norm = view_norm(a, view)
        assert len(norm.mean) == 3 and len(norm.std) == 3, (
            "mean and std must be 3-tuples or {'query': 3-tuple, 'reference': 3-tuple}"
        )
        assert all(v > 0 for v in norm.std), "std must be > 0"
    views = VIEWS if accepts(a, "view") else ("query",)
    d = int(a.embedding_dim)
    a.train()
    for view in views:
        for h, w in sizes:
            x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed))
            y = encode(a, x, view)
            assert tuple(y.shape) == (2, d), f"encoder output {tuple(y.shape)} for {h}x{w} ({view}), expected (2, {d})"
            assert y.dtype == torch.float32, f"encoder output dtype {y.dtype}, expected float32"
            assert torch.isfinite(y).all(), "encoder output is not finite"
    a.zero_grad()
    sum(encode(a, torch.randn(2, 3, *sizes[0]), view).pow(2).sum() for view in views).backward()
    no_grad = [n for n, p in a.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters receive no gradient from any view: {no_grad[:5]}"
    a.eval()
    b.eval()
    x = torch.randn(2, 3, *sizes[0])
    with torch.no_grad():
        for view in views:
            assert torch.allclose(encode(a, x, view), encode(b, x, view)), (
                f"encoder is not deterministic under a seed ({view})"
            )


def check_loss(
    loss: Any, options: Mapping[str, Any] | None = None, *, symmetric: bool | None = None, batch: int = 6, dim: int = 16
) -> None:
    """Finite scalar, gradients reach both inputs, lower for matching pairs than for shuffled
    ones, and (when ``symmetric``) unchanged when the two views swap. A loss that declares
    per-pair data (``indices``, ``references``, ``conflicts``, ``columns``) receives it for a
    batch of a metadata-only training set whose per-pair columns are all 1.0 (every column
    name the loss's options mention is provided)."""
    import torch

    from geokit.engine import loss_inputs

    ctx = test_context("loss", embedding_dim=dim)
    fn = _build("loss", loss, options, ctx)
    train = ctx.train_set
    names = {v for v in (options or {}).values() if isinstance(v, str)} | {"weight"}
    train.columns = {n: np.ones(len(train)) for n in names}
    idx = torch.arange(batch, dtype=torch.int64) * 3 % len(train)  # distinct references
    extra = loss_inputs(fn, train, idx)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(batch, dim, generator=g, requires_grad=True)
    r = (q.detach() + 0.05 * torch.randn(batch, dim, generator=g)).requires_grad_(True)
    value = fn(q, r, **extra)
    assert value.ndim == 0, f"loss must be a scalar, got shape {tuple(value.shape)}"
    assert torch.isfinite(value), "loss is not finite"
    value.backward()
    assert q.grad is not None and q.grad.abs().sum() > 0, "no gradient reaches the query embeddings"
    assert r.grad is not None and r.grad.abs().sum() > 0, "no gradient reaches the reference embeddings"
    with torch.no_grad():
        shuffled = fn(q, r.roll(1, 0), **extra)
        assert fn(q, r, **extra) < shuffled, "loss is not lower for matching pairs than for mismatched ones"
        if symmetric:
            assert torch.allclose(fn(q, r, **extra), fn(r, q, **extra), atol=1e-6), (
                "loss is not symmetric in its inputs"
            )


def check_sampler(
    sampler: Any,
    options: Mapping[str, Any] | None = None,
    *,
    train: TrainSet | None = None,
    batch_size: int = 8,
    epochs: int = 3,
    embed: Any = None,
    conflicts_apart: bool = False,
) -> None:
    """Valid indices, no reference twice in a batch (nor, with ``conflicts_apart``, a declared
    conflict), each pair at most once per epoch, the same batches for the same seed and epoch
    (also after a state round trip). A step-level sampler (``next_batch``) is driven step by
    step, and its state round trip is checked in the middle of an epoch too."""
    train = train or synthetic_train_set(64, n_refs=48, conflicts=True)
    if embed is None:
        rng = np.random.default_rng(1)
        ref = rng.normal(size=(len(train.reference_paths), 8)).astype(np.float32)
        qry = ref[train.pair_reference] + 0.1 * rng.normal(size=(len(train), 8)).astype(np.float32)
        emb = TrainEmbeddings(
            qry / np.linalg.norm(qry, axis=1, keepdims=True), ref / np.linalg.norm(ref, axis=1, keepdims=True)
        )
        embed = lambda: emb  # noqa: E731

    def embed_pairs(idx: np.ndarray) -> TrainEmbeddings:
        full = embed()
        return TrainEmbeddings(full.query[idx], full.reference[train.pair_reference[idx]])

    def context(epoch: int, k: int = 0) -> StepContext:
        return StepContext(
            epoch=epoch,
            epochs=epochs,
            batch_size=batch_size,
            seed=7,
            train=train,
            embed=embed,
            step=k,
            batch=k,
            embed_pairs=embed_pairs,
        )

    def run(s: Any, epoch: int, start: int = 0) -> list[np.ndarray]:
        if not is_step_level(s):
            return [np.asarray(b) for b in s.batches(context(epoch))]
        if start == 0 and hasattr(s, "start_epoch"):
            s.start_epoch(context(epoch))
        out: list[np.ndarray] = []
        for k in range(start, len(train) + 1):
            batch = s.next_batch(context(epoch, k))
            if batch is None:
                return out
            out.append(np.asarray(batch))
        raise AssertionError(f"epoch {epoch}: next_batch never returned None")

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
            assert not dup and len(set(batch.tolist())) == len(batch), (
                f"epoch {epoch}: pairs {sorted(dup)[:5]} used more than once"
            )
            seen.update(batch.tolist())
            refs = train.pair_reference[batch]
            assert len(set(refs.tolist())) == len(refs), f"epoch {epoch} batch {k}: a reference appears twice"
            if conflicts_apart and train.pair_conflicts is not None:
                bad = set(train.pair_conflicts[batch].ravel().tolist()) & set(refs.tolist())
                assert not bad, f"epoch {epoch} batch {k}: conflicting references {sorted(bad)[:5]} share a batch"
        if b is not None:
            b.load_state_dict(state)
            again = run(b, epoch)
            assert len(again) == len(batches) and all(np.array_equal(x, y) for x, y in zip(batches, again)), (
                f"epoch {epoch}: different batches for the same seed, epoch and state"
            )
            if is_step_level(a) and len(batches) > 1:  # resume in the middle of the epoch
                c = _build("sampler", sampler, options)
                c.load_state_dict(state)
                c.start_epoch(context(epoch)) if hasattr(c, "start_epoch") else None
                c.next_batch(context(epoch, 0))
                c.load_state_dict(_roundtrip(c.state_dict()))
                rest = run(c, epoch, start=1)
                assert len(rest) == len(batches) - 1 and all(np.array_equal(x, y) for x, y in zip(batches[1:], rest)), (
                    f"epoch {epoch}: a resumed step-level sampler hands out different batches"
                )


def _roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    """A sampler state as a resume would give it back (JSON values and numpy arrays)."""
    import json

    arrays = {k: np.array(v) for k, v in state.items() if isinstance(v, np.ndarray)}
    plain = json.loads(json.dumps({k: v for k, v in state.items() if k not in arrays}))
    return {**plain, **arrays}


def check_dataset(dataset: Any, options: Mapping[str, Any] | None = None, *, items: int = 3) -> None:
    """Train and eval sets are consistent; the first training pairs and each split's first query
    and reference load at the declared sizes; the training augmentation keeps shapes and is a
    function of its generator."""
    ds: CrossViewDataset = _build("dataset", dataset, options)
    tr = ds.train_set()
    assert isinstance(tr, TrainSet) and len(tr) > 0, "train_set() must return a non-empty TrainSet"
    for name, col in tr.columns.items():
        assert len(col) == len(tr) and np.isfinite(col).all(), f"per-pair column {name!r}: one finite row per pair"
    for split in ds.splits:
        es = ds.eval_set(split)
        assert isinstance(es, EvalSet), f"eval_set({split!r}) must return an EvalSet"
        check_match_table(es)
        for paths, size in ((es.query_paths, ds.query_size), (es.reference_paths, ds.reference_size)):
            assert len(paths) > 0, f"eval_set({split!r}) has no queries or no references"
            im = ds.load_image(paths[0], size)
            assert im.shape == (*size, 3) and im.dtype == np.uint8, f"{split} {paths[0]}: {im.shape} {im.dtype}"
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
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]), (
            "augment_pair is not a function of its generator"
        )


def check_match_table(eval_set: EvalSet) -> None:
    """Every query has a true reference; an explicit :class:`MatchTable` is in range, has no
    duplicated (query, reference) entry and positive weights; GPS arrays have one row each."""
    es = eval_set
    pos = es.positives()
    assert len(pos) == len(es.query_paths), "positives(): one entry per query"
    m = es.matches
    if m is not None:
        assert isinstance(m, MatchTable), "EvalSet.matches must be a geokit.data.MatchTable"
        pairs = set(zip(m.query.tolist(), m.reference.tolist()))
        assert len(pairs) == len(m.query), "the match table lists a (query, reference) pair twice"
        assert m.weight is None or (m.weight > 0).all(), "match weights must be > 0"
    for attr, n in (("query_gps", len(es.query_paths)), ("reference_gps", len(es.reference_paths))):
        gps = getattr(es, attr)
        if gps is not None:
            assert gps.shape == (n, 2), f"{attr} must be ({n}, 2), got {gps.shape}"
            assert (np.abs(gps[:, 0]) <= 90).all() and (np.abs(gps[:, 1]) <= 180).all(), f"{attr}: not degrees"


def check_transform(
    transform: Any,
    options: Mapping[str, Any] | None = None,
    *,
    sizes: tuple[tuple[int, int], ...] = ((32, 128), (40, 40)),
) -> None:
    """uint8 HWC out for each view, the size ``output_size`` announces, a function of its
    generator, and the same output for the same seed in evaluation mode."""
    t = _build("transform", transform, options)
    rng = np.random.default_rng(0)
    for view in ("query", "reference"):
        for h, w in sizes:
            image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            for training in (True, False):
                a = t(image.copy(), view=view, training=training, rng=np.random.default_rng(5))
                b = t(image.copy(), view=view, training=training, rng=np.random.default_rng(5))
                assert isinstance(a, np.ndarray) and a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3, (
                    f"{view}: a transform must return uint8 HWC RGB, got {getattr(a, 'dtype', type(a))} "
                    f"{getattr(a, 'shape', '')}"
                )
                assert np.array_equal(a, b), f"{view}: the output is not a function of the generator"
                want = tuple(t.output_size((h, w), view)) if hasattr(t, "output_size") else (h, w)
                assert a.shape[:2] == want, f"{view}: output {a.shape[:2]} but output_size says {want}"


def check_metric(metric: Any, options: Mapping[str, Any] | None = None) -> None:
    """``compute`` returns finite floats under new keys for a small protocol with GPS, and is a
    function of its input."""
    from geokit.engine.evaluation import METRIC_ORDER, Retrieval

    m = _build("metric", metric, options)
    rng = np.random.default_rng(0)
    n = 12
    gps = np.c_[48 + rng.random(n) * 0.01, 11 + rng.random(n) * 0.01]
    es = EvalSet(
        [f"q{i}" for i in range(n)],
        [f"r{i}" for i in range(n)],
        np.arange(n),
        np.arange(n),
        query_gps=gps,
        reference_gps=gps,
    )
    emb = rng.normal(size=(n, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    k = int(getattr(m, "k", 1))
    scores = emb @ emb.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    result = Retrieval(es, emb, emb, top, np.take_along_axis(scores, top, 1))
    if hasattr(m, "applies"):
        assert isinstance(m.applies(es), bool), "applies(eval_set) must return a bool"
    out = m.compute(result)
    assert isinstance(out, Mapping) and out, "compute() must return a non-empty mapping"
    for key, value in out.items():
        assert key not in METRIC_ORDER and key not in ("queries", "references"), f"metric key {key!r} is reserved"
        assert np.isfinite(float(value)), f"metric {key!r} is not a finite number"
    assert dict(m.compute(result)) == dict(out), "compute() is not a function of its input"


def check_reranker(reranker: Any, options: Mapping[str, Any] | None = None) -> None:
    """Shapes kept, finite output, a function of its input, and empty query sets allowed
    (``index build`` passes none)."""
    r = _build("reranker", reranker, options)
    rng = np.random.default_rng(0)
    q = rng.normal(size=(5, 8)).astype(np.float32)
    g = rng.normal(size=(9, 8)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    a = r(q.copy(), g.copy())
    b = r(q.copy(), g.copy())
    assert len(a) == 2 and np.shape(a[0]) == q.shape and np.shape(a[1]) == g.shape, "shapes must not change"
    assert np.isfinite(a[0]).all() and np.isfinite(a[1]).all(), "re-ranked embeddings are not finite"
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]), "not a function of its input"
    e = r(np.zeros((0, 8), np.float32), g.copy())
    assert np.shape(e[0]) == (0, 8) and np.shape(e[1]) == g.shape, "an empty query set must be allowed"
