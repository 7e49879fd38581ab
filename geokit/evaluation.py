"""Evaluation: embed the protocol's queries and references, then :func:`retrieval_metrics`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geokit.config import Config
from geokit.data import EvalSet
from geokit.embedding import embed_paths
from geokit.metrics import retrieval_metrics
from geokit.model import Parts, build
from geokit.runtime import configure_threads, default_workers, log, seed_everything, select_device

METRIC_ORDER = ("R@1", "R@5", "R@10", "R@1%", "hit_rate", "hit_rate_strict", "AP")


@dataclass
class EvalResult:
    metrics: dict[str, float]
    eval_set: EvalSet
    query: np.ndarray  # (Q, D) unit rows
    reference: np.ndarray  # (R, D) unit rows


def run_protocol(parts: Parts, split: str | None = None, *, device: Any = None,
                 show: bool | None = None) -> EvalResult:
    """Evaluate the built ``parts`` on ``split`` of their dataset."""
    cfg = parts.config
    device = device or select_device(cfg.train.device)
    ds = parts.dataset
    es = ds.eval_set(ds.check_split(split or cfg.eval.split))
    amp = bool(cfg.train.amp) if cfg.train.amp is not None else device.type == "cuda"
    workers = cfg.train.workers if cfg.train.workers is not None else default_workers(device)
    parts.encoder.to(device)
    common = dict(batch_size=cfg.eval.batch_size, device=device, amp=amp, workers=workers, show=show)
    q = embed_paths(parts.encoder, ds, es.query_paths, ds.query_size, parts.norm,
                    desc=f"{es.name} {ds.query_view}", **common)
    r = embed_paths(parts.encoder, ds, es.reference_paths, ds.reference_size, parts.norm,
                    desc=f"{es.name} {ds.reference_view}", **common)
    metrics = retrieval_metrics(q, r, es.positives(), semi_positives=es.semi_positives,
                                chunk_size=cfg.eval.chunk_size, ap=es.multi_positive,
                                bf16_screen=cfg.eval.bf16_screen)
    return EvalResult(metrics, es, q, r)


def evaluate(config: Config, checkpoint: str | Path | None = None, *,
             save_embeddings: str | Path | None = None, show: bool | None = None) -> EvalResult:
    """``geokit evaluate``: build as configured, load ``checkpoint`` strictly, run the protocol."""
    configure_threads(config.train.threads)
    seed_everything(config.seed)  # a random-init encoder is the same on every call
    parts = build(config, for_checkpoint=checkpoint is not None)
    if checkpoint is not None:
        parts.load(checkpoint)
        log.info("loaded weights from %s", checkpoint)
    result = run_protocol(parts, show=show)
    if save_embeddings is not None:
        write_embeddings(save_embeddings, result)
    return result


def write_embeddings(path: str | Path, result: EvalResult) -> None:
    """The ``--save-embeddings`` file (ARCHITECTURE.md contract)."""
    import torch

    from geokit.checkpoint import atomic_write

    es = result.eval_set
    tensors = {
        "query": torch.from_numpy(np.ascontiguousarray(result.query, dtype=np.float32)),
        "reference": torch.from_numpy(np.ascontiguousarray(result.reference, dtype=np.float32)),
        "query_labels": torch.from_numpy(np.ascontiguousarray(es.query_labels, dtype=np.int64)),
        "reference_labels": torch.from_numpy(np.ascontiguousarray(es.reference_labels, dtype=np.int64)),
    }
    if es.semi_positives is not None:
        tensors["semi_positives"] = torch.from_numpy(np.ascontiguousarray(es.semi_positives, dtype=np.int64))
    from safetensors.torch import save_file

    atomic_write(path, lambda p: save_file(tensors, str(p)))


def format_table(metrics: dict[str, float], title: str = "") -> str:
    """A small aligned table of the metrics that are present."""
    keys = [k for k in METRIC_ORDER if k in metrics]
    head = "  ".join(f"{k:>9}" for k in keys)
    vals = "  ".join(f"{metrics[k]:9.2f}" for k in keys)
    counts = f"{int(metrics.get('queries', 0))} queries x {int(metrics.get('references', 0))} references"
    return "\n".join(x for x in (title, head, vals, counts) if x)
