"""Build the components of a run from its config, and move weights in and out of checkpoints."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geokit.checkpoint import load_module_strict, load_weights, save_weights
from geokit.config import Config
from geokit.data import CrossViewDataset, Normalisation
from geokit.errors import GeokitError
from geokit.registry import create

log = logging.getLogger("geokit")

FORMAT = 1
# Encoder options that only choose *initial* weights. When a checkpoint's weights replace them,
# geokit switches them off, so rebuilding a trained model never downloads anything.
INITIAL_WEIGHT_OPTIONS = {"pretrained": False, "weights": None}


def without_initial_weights(options: Any) -> Any:
    """``options`` (a pydantic model or a dict) with ``pretrained``/``weights`` switched off."""
    if isinstance(options, dict):
        return {**options, **{k: v for k, v in INITIAL_WEIGHT_OPTIONS.items() if k in options}}
    fields = type(options).model_fields
    return options.model_copy(update={k: v for k, v in INITIAL_WEIGHT_OPTIONS.items() if k in fields})


@dataclass
class Parts:
    """The built components of one run."""

    config: Config
    dataset: CrossViewDataset
    encoder: Any  # torch.nn.Module
    loss: Any  # torch.nn.Module

    @property
    def norm(self) -> Normalisation:
        return Normalisation(tuple(self.encoder.mean), tuple(self.encoder.std))

    def tensors(self) -> dict[str, Any]:
        out = {f"encoder.{k}": v for k, v in self.encoder.state_dict().items()}
        out.update({f"loss.{k}": v for k, v in self.loss.state_dict().items()})
        return out

    def record(self, **extra: Any) -> dict[str, Any]:
        """The checkpoint record: what a user needs to use these weights without the run."""
        from geokit.runtime import versions

        cfg = self.config.to_dict()
        ds = self.dataset
        return {
            "format": FORMAT,
            "encoder": cfg["encoder"],
            "loss": cfg["loss"],
            "dataset": cfg["dataset"]["name"],
            "embedding_dim": int(self.encoder.embedding_dim),
            "mean": list(self.encoder.mean),
            "std": list(self.encoder.std),
            "query_size": list(ds.query_size),
            "reference_size": list(ds.reference_size),
            "query_view": ds.query_view,
            "reference_view": ds.reference_view,
            "versions": versions(),
            "config": cfg,
            **extra,
        }

    def save(self, path: str | Path, **extra: Any) -> None:
        save_weights(path, self.tensors(), self.record(**extra))

    def load(self, path: str | Path) -> dict[str, Any]:
        """Load weights strictly from a geokit checkpoint; returns its record."""
        tensors, record = load_weights(path)
        enc = {k[len("encoder."):]: v for k, v in tensors.items() if k.startswith("encoder.")}
        loss = {k[len("loss."):]: v for k, v in tensors.items() if k.startswith("loss.")}
        other = sorted(k for k in tensors if not k.startswith(("encoder.", "loss.")))
        if other:
            raise GeokitError(f"{path}: unexpected tensors {other[:5]} (not encoder.* or loss.*)")
        load_module_strict(self.encoder, enc, f"{path} (encoder)")
        if loss or list(self.loss.state_dict()):
            load_module_strict(self.loss, loss, f"{path} (loss)")
        return record


def build(config: Config, *, dataset: CrossViewDataset | None = None, for_checkpoint: bool = False) -> Parts:
    """Build dataset, encoder and loss as configured (the sampler is built by the trainer).

    :param for_checkpoint: weights will be loaded from a checkpoint, so the encoder is built
        without its initial weights (see :data:`INITIAL_WEIGHT_OPTIONS`).
    """
    if dataset is None:
        dataset = create("dataset", config.names["dataset"], config.dataset)
        dataset.name = config.names["dataset"]
    enc_opts = without_initial_weights(config.encoder) if for_checkpoint else config.encoder
    encoder = create("encoder", config.names["encoder"], enc_opts)
    loss = create("loss", config.names["loss"], config.loss)
    for attr in ("embedding_dim", "mean", "std"):
        if not hasattr(encoder, attr):
            raise GeokitError(f"encoder '{config.names['encoder']}' has no '{attr}' attribute "
                              "(see geokit_register_encoders)")
    if getattr(encoder, "loss_state", None):
        hand_over_loss_state(encoder.loss_state, loss, config.names["loss"])
    return Parts(config, dataset, encoder, loss)


def hand_over_loss_state(state: dict[str, Any], loss: Any, loss_name: str) -> list[str]:
    """Load the tensors an encoder found for the loss in its initial weights (``loss_state``,
    e.g. Sample4Geo's ``logit_scale``) into ``loss`` where its state dict has the same key and
    shape; log what was placed, warn in one line about the rest. Returns the placed keys."""
    import torch

    own = loss.state_dict()
    placed = sorted(k for k, v in state.items()
                    if k in own and isinstance(v, torch.Tensor) and tuple(v.shape) == tuple(own[k].shape))
    with torch.no_grad():
        for k in placed:
            own[k].copy_(state[k])
    if placed:
        shown = ", ".join(f"{k}={state[k].item():.4g}" if state[k].numel() == 1 else k for k in placed)
        log.info("loss '%s': %s from the encoder's initial weights", loss_name, shown)
    rest = sorted(set(state) - set(placed))
    if rest:
        log.warning("the encoder's initial weights hold tensors for the loss that loss '%s' has no "
                    "place for (other name or shape), ignored: %s", loss_name,
                    ", ".join(rest[:6]) + (f" (+{len(rest) - 6} more)" if len(rest) > 6 else ""))
    return placed
