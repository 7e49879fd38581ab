"""Evaluation: embed the protocol's queries and references, then :func:`retrieval_metrics`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geokit import distributed as D
from geokit.config import Config
from geokit.data import EvalSet
from geokit.embedding import embedding_dtype
from geokit.engine._embeddings_file import read_embeddings, write_embeddings
from geokit.errors import GeokitError
from geokit.metrics import retrieval_metrics
from geokit.model import INITIAL_WEIGHT_OPTIONS, Parts, build
from geokit.runtime import configure_threads, default_workers, log, seed_everything, select_device

__all__ = [
    "METRIC_ORDER",
    "EvalResult",
    "Retrieval",
    "apply_checkpoint_record",
    "apply_rerankers",
    "build_listed",
    "build_rerankers",
    "embed_view",
    "evaluate",
    "format_table",
    "metrics_from_embeddings",
    "protocol_metrics",
    "read_embeddings",
    "run_protocol",
    "write_embeddings",
]


METRIC_ORDER = ("R@1", "R@5", "R@10", "R@1%", "hit_rate", "hit_rate_strict", "AP")
"""Core metrics first, in this order; component metrics follow in the order they were computed."""


@dataclass
class EvalResult:
    metrics: dict[str, float]  # empty on ranks other than 0 under torchrun
    eval_set: EvalSet
    query: np.ndarray  # (Q, D) unit rows (after re-ranking)
    reference: np.ndarray  # (R, D) unit rows (after re-ranking)


@dataclass
class Retrieval:
    """What a metric component's ``compute`` receives (see ``geokit_register_metrics``).

    :ivar topk, topk_scores: ``(Q, k)`` best references of every query and their scores, best
        first, from the exact search (ties by lower index); ``k`` is the largest ``k`` any
        configured metric asks for (its attribute ``k``, default 1).
    """

    eval_set: EvalSet
    query: np.ndarray
    reference: np.ndarray
    topk: np.ndarray
    topk_scores: np.ndarray


def build_listed(config: Config, kind: str, context: Any = None) -> list[Any]:
    """Build the configured components of list kind ``kind`` ('metric', 'reranker'); for metrics
    without a ``metrics`` list, every registered metric whose options all have defaults."""
    from geokit.model import build_component
    from geokit.registry import get_registry

    items = config.listed(kind)
    if items is None:  # metrics: every registered one that can be built without options
        items = []
        for comp in get_registry(kind):
            try:
                items.append((comp.name, comp.parse_options({})))
            except Exception:  # noqa: BLE001 (a metric with required options is opt-in)
                continue
    return [build_component(kind, name, opts, context) for name, opts in items]


def build_rerankers(sections: list[Any] | None) -> list[Any]:
    """Re-rankers from config-style sections (``[{"name": "qe", "n": 3}, ...]``), e.g. the
    ``rerankers`` a checkpoint's record or an index's metadata keeps."""
    from geokit.model import build_component

    out = []
    for i, section in enumerate(sections or []):
        if not isinstance(section, dict) or not isinstance(section.get("name"), str):
            raise GeokitError(f"rerankers.{i}: expected a mapping with a 'name', got {str(section)[:80]}")
        options = {k: v for k, v in section.items() if k != "name"}
        out.append(build_component("reranker", section["name"], options, None))
    return out


def apply_rerankers(rerankers: list[Any], query: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run re-rankers in order; what they change is L2-normalised float32 again."""
    for rr in rerankers:
        q2, r2 = rr(query, reference)
        # a side returned as it was stays bit-identical (no second normalisation)
        query = query if q2 is query else _unit(q2)
        reference = reference if r2 is reference else _unit(r2)
    return query, reference


def _unit(x: Any) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(x, dtype=embedding_dtype()))
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def protocol_metrics(
    es: EvalSet,
    query: np.ndarray,
    reference: np.ndarray,
    *,
    metrics: Sequence[Any] = (),
    chunk_size: int | None = None,
    bf16_screen: bool | None = None,
) -> dict[str, float]:
    """The core retrieval metrics of ``es`` plus those of the metric components that apply."""
    from geokit.retrieval import search

    out = retrieval_metrics(
        query,
        reference,
        es.positives(),
        semi_positives=es.semi_positives,
        chunk_size=chunk_size,
        ap=es.multi_positive,
        bf16_screen=bf16_screen,
    )
    active = [m for m in metrics if getattr(m, "applies", lambda _es: True)(es)]
    if active and len(query) and len(reference):
        k = max(int(getattr(m, "k", 1)) for m in active)
        scores, idx = search(query, reference, k, chunk_size=chunk_size)
        result = Retrieval(es, query, reference, idx, scores)
        for m in active:
            extra = m.compute(result)
            clash = sorted(set(extra) & set(out))
            if clash:
                raise GeokitError(f"metric {type(m).__name__} returned keys that already exist: {clash}")
            out.update({key: float(v) for key, v in extra.items()})
    return out


def embed_view(parts: Parts, es: EvalSet, view: str, *, world: D.World = D.SINGLE, **kw: Any) -> np.ndarray:
    """Embed the query or reference side of ``es`` (transforms in evaluation mode, per-view
    normalisation and branch), split over the ranks of ``world``."""
    ds = parts.dataset
    paths = es.query_paths if view == "query" else es.reference_paths
    size = ds.query_size if view == "query" else ds.reference_size
    name = ds.query_view if view == "query" else ds.reference_view
    return D.embed_sharded(
        world,
        parts.encoder,
        ds,
        paths,
        size,
        parts.norm_for(view),
        desc=f"{es.name} {name}",
        view=view,
        transforms=parts.transforms,
        seed=parts.config.seed,
        **kw,
    )


def run_protocol(
    parts: Parts, split: str | None = None, *, device: Any = None, show: bool | None = None, world: D.World = D.SINGLE
) -> EvalResult:
    """Evaluate the built ``parts`` on ``split`` of their dataset: embed, re-rank, metrics.

    With a distributed ``world`` every rank must call it: each embeds its share, all get the
    gathered embeddings, and rank 0 alone re-ranks and computes the metrics (the others return
    the embeddings and no metrics)."""
    cfg = parts.config
    device = device or select_device(cfg.train.device)
    ds = parts.dataset
    es = ds.eval_set(ds.check_split(split or cfg.eval.split))
    amp = bool(cfg.train.amp) if cfg.train.amp is not None else device.type == "cuda"
    workers = cfg.train.workers if cfg.train.workers is not None else default_workers(device)
    parts.encoder.to(device)
    common = dict(batch_size=cfg.eval.batch_size, device=device, amp=amp, workers=workers, show=show)
    q = embed_view(parts, es, "query", world=world, **common)
    r = embed_view(parts, es, "reference", world=world, **common)
    if not world.is_main:
        return EvalResult({}, es, q, r)
    q, r = apply_rerankers(build_listed(cfg, "reranker", parts.context), q, r)
    metrics = protocol_metrics(
        es,
        q,
        r,
        metrics=build_listed(cfg, "metric", parts.context),
        chunk_size=cfg.eval.chunk_size,
        bf16_screen=cfg.eval.bf16_screen,
    )
    return EvalResult(metrics, es, q, r)


def evaluate(
    config: Config,
    checkpoint: str | Path | None = None,
    *,
    save_embeddings: str | Path | None = None,
    show: bool | None = None,
) -> EvalResult:
    """``geokit evaluate``: build as configured, load ``checkpoint`` strictly, run the protocol.

    The config needs only ``dataset`` and, without a checkpoint, ``encoder`` (loss and sampler
    sections are not used). With a checkpoint, its record supplies the encoder and the per-view
    input sizes (see :func:`apply_checkpoint_record`).

    Under torchrun every rank calls this and embeds its share; rank 0 computes the metrics and
    writes ``save_embeddings`` (the other ranks return empty metrics). A rank that dies or hangs
    makes the others fail after ``train.dist_timeout`` seconds.
    """
    from geokit.runtime import ensure_console_logging

    ensure_console_logging()  # the size warning and progress lines reach the terminal
    if checkpoint is not None:
        from geokit.checkpoint import read_record

        config = apply_checkpoint_record(config, read_record(checkpoint), str(checkpoint))
    elif config.encoder is None:
        raise GeokitError(
            "evaluate: the config has no 'encoder' section and no --checkpoint was given; "
            "give a checkpoint (its record names the encoder) or an encoder section"
        )
    if config.dataset is None:
        raise GeokitError("evaluate: the config has no 'dataset' section (with at least 'name')")
    configure_threads(config.train.threads)
    world, device = D.setup(config.train.device, config.train.dist_timeout)
    clean = False
    try:
        seed_everything(config.seed)  # a random-init encoder is the same on every call (and rank)
        parts = build(config, for_checkpoint=checkpoint is not None)
        if checkpoint is not None:
            parts.load(checkpoint)
            if world.is_main:
                log.info("loaded weights from %s", checkpoint)
        result = run_protocol(parts, device=device, show=show if world.is_main else False, world=world)
        if save_embeddings is not None and world.is_main:
            write_embeddings(save_embeddings, result)
        clean = True
        return result
    except GeokitError:
        raise
    except Exception as exc:
        if world.distributed and D.is_comm_error(exc):
            raise D.comm_error(world, "distributed evaluation", exc, "Re-run the command.") from None
        raise
    finally:
        D.teardown(world, clean=clean)


def _json(value: Any) -> Any:
    """A comparable plain value (tuples -> lists, via JSON)."""
    return json.loads(json.dumps(value, default=str))


def apply_checkpoint_record(config: Config, record: dict[str, Any], source: str) -> Config:
    """``config`` with the encoder and per-view input sizes of a checkpoint's record.

    The encoder is always the record's (its weights fit nothing else). An encoder section in the
    config may stay; an option it states explicitly that contradicts the record (``model``, say)
    is an error naming both values. Input sizes the config does not state explicitly come from
    the record; stated sizes that differ are used, with a warning naming both.
    """
    rec_enc = record.get("encoder")
    if not isinstance(rec_enc, dict) or not rec_enc.get("name"):
        raise GeokitError(
            f"{source}: the checkpoint record has no encoder; it was not written by "
            "'geokit train' (or 'geokit import-weights')"
        )
    rec_opts = {k: v for k, v in rec_enc.items() if k != "name"}
    name = str(rec_enc["name"])
    if config.encoder is not None:
        if config.names["encoder"] != name:
            raise GeokitError(
                f"the config's encoder.name is '{config.names['encoder']}' but checkpoint "
                f"{source} holds a '{name}' encoder; remove the config's encoder section "
                "(the checkpoint's record supplies it) or use a matching checkpoint"
            )
        mine = config.encoder.model_dump(mode="json")
        for key in sorted(config.encoder.model_fields_set - set(INITIAL_WEIGHT_OPTIONS)):
            if key in rec_opts and _json(mine.get(key)) != _json(rec_opts[key]):
                raise GeokitError(
                    f"the config's encoder.{key} is {_json(mine.get(key))} but checkpoint "
                    f"{source} was trained with encoder.{key} {_json(rec_opts[key])}; remove "
                    f"encoder.{key} from the config (the checkpoint's record supplies the "
                    "encoder) or use a matching checkpoint"
                )
    from geokit.registry import get_registry

    comp = get_registry("encoder").get(name)
    try:
        encoder = comp.parse_options(rec_opts, prefix="encoder")
    except GeokitError as exc:
        raise GeokitError(f"{source}: the checkpoint record's encoder does not validate: {exc}") from None
    update: dict[str, Any] = {"encoder": encoder, "names": {**config.names, "encoder": comp.name}}
    ds = config.dataset
    if ds is not None:
        sizes: dict[str, Any] = {}
        for view in ("query", "reference"):
            key, rec = f"{view}_size", record.get(f"{view}_size")
            if key not in type(ds).model_fields or rec is None:
                continue
            ours = _json(getattr(ds, key))
            if key not in ds.model_fields_set:
                sizes[key] = tuple(rec)
            elif ours != _json(rec):
                log.warning(
                    "evaluating at dataset.%s %s although checkpoint %s was trained at %s (its "
                    "record); leave dataset.%s out of the config to evaluate at the recorded size",
                    key,
                    ours,
                    source,
                    _json(rec),
                    key,
                )
        if sizes:
            update["dataset"] = ds.model_copy(update=sizes)
    return config.model_copy(update=update)


def metrics_from_embeddings(path: str | Path, *, metrics: list[Any] | None = None) -> dict[str, float]:
    """Recompute a ``--save-embeddings`` file's metrics: the core ones, and those of ``metrics``
    (default: every registered metric component that applies, with default options)."""
    from geokit.registry import get_registry

    es, q, r = read_embeddings(path)
    if metrics is None:
        metrics = []
        for comp in get_registry("metric"):
            try:
                metrics.append(comp.factory(comp.parse_options({})))
            except Exception:  # noqa: BLE001 (metrics with required options are opt-in)
                continue
    return protocol_metrics(es, q, r, metrics=metrics)


def format_table(metrics: dict[str, float], title: str = "") -> str:
    """A small aligned table of the metrics that are present."""
    extra = [
        k
        for k, v in metrics.items()
        if k not in METRIC_ORDER and k not in ("queries", "references") and isinstance(v, (int, float))
    ]
    keys = [k for k in METRIC_ORDER if k in metrics] + extra
    width = max([9, *(len(k) for k in keys)])
    head = "  ".join(f"{k:>{width}}" for k in keys)
    vals = "  ".join(f"{metrics[k]:{width}.2f}" for k in keys)
    counts = f"{int(metrics.get('queries', 0))} queries x {int(metrics.get('references', 0))} references"
    return "\n".join(x for x in (title, head, vals, counts) if x)
