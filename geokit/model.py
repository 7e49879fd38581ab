"""Build the components of a run from its config, and move weights in and out of checkpoints."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from geokit._calls import accepts
from geokit.checkpoint import (
    MAX_INPUT_SIDE,
    RECORD_FORMAT,
    load_model_weights,
    model_record,
    model_tensors,
    save_weights,
)
from geokit.config import Config
from geokit.data import CrossViewDataset, Normalisation, Size, TrainSet, transformed_size
from geokit.errors import GeokitError
from geokit.registry import create

log = logging.getLogger("geokit")
VIEWS = ("query", "reference")

FORMAT = RECORD_FORMAT  # the checkpoint record's format (geokit.checkpoint owns records)
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
class BuildContext:
    """What a component factory receives when it declares a ``context`` parameter.

    Components are built in this order, each context filled with what is known by then:
    dataset, transforms, encoder, loss, sampler, metrics, re-rankers. Reading
    :attr:`num_pairs`, :attr:`num_classes` or :attr:`train_set` lists the training set (once,
    on first use), so a factory that does not need them costs nothing.

    :ivar query_size, reference_size: ``(height, width)`` of the images the encoder receives
        for each view (the dataset's sizes after the configured transforms).
    :ivar embedding_dim: the encoder's ``embedding_dim``; None while the encoder is built.
    """

    kind: str
    dataset_name: str = "dataset"
    query_size: Size = (224, 224)
    reference_size: Size = (224, 224)
    query_view: str = "ground"
    reference_view: str = "aerial"
    embedding_dim: int | None = None
    _train: Callable[[], TrainSet] | None = field(default=None, repr=False)
    _train_cache: list[TrainSet] = field(default_factory=list, repr=False)

    @property
    def train_set(self) -> TrainSet:
        """The training set (listed on first use)."""
        if not self._train_cache:
            if self._train is None:
                raise GeokitError(f"the {self.kind} asked for the training set, which this build has no dataset for")
            self._train_cache.append(self._train())
        return self._train_cache[0]

    @property
    def num_pairs(self) -> int:
        return len(self.train_set)

    @property
    def num_classes(self) -> int:
        """Location classes for classification losses: one per training reference (the
        class of pair *i* is ``pair_reference[i]``, given to losses as ``references``)."""
        return len(self.train_set.reference_paths)

    def size(self, view: str) -> Size:
        return self.query_size if view == "query" else self.reference_size

    def for_kind(self, kind: str, **changes: Any) -> BuildContext:
        """A copy for building ``kind`` that shares the listed training set."""
        from dataclasses import replace

        return replace(self, kind=kind, _train_cache=self._train_cache, **changes)


def build_component(kind: str, name: str, options: Any, context: BuildContext | None) -> Any:
    """``create`` that hands ``context`` to factories declaring a ``context`` parameter."""
    from geokit.registry import get_registry

    comp = get_registry(kind).get(name)
    if context is not None and accepts(comp.factory, "context"):
        return create(kind, name, options, context=context)
    return create(kind, name, options)


def view_norm(encoder: Any, view: str) -> Normalisation:
    """The encoder's normalisation for ``view``: ``mean``/``std`` are 3-tuples (both views) or
    mappings ``{"query": ..., "reference": ...}``."""
    mean, std = encoder.mean, encoder.std
    if isinstance(mean, Mapping):
        mean = mean[view]
    if isinstance(std, Mapping):
        std = std[view]
    rgb = tuple[float, float, float]  # one value per channel
    return Normalisation(cast(rgb, tuple(float(x) for x in mean)), cast(rgb, tuple(float(x) for x in std)))


def encode(encoder: Any, images: Any, view: str) -> Any:
    """``encoder(images)``, with ``view=`` when the encoder's ``forward`` takes it."""
    if accepts(encoder, "view"):
        return encoder(images, view=view)
    return encoder(images)


@dataclass
class Parts:
    """The built components of one run."""

    config: Config
    dataset: CrossViewDataset
    encoder: Any  # torch.nn.Module
    loss: Any  # torch.nn.Module; None when the config has no loss (evaluation)
    transforms: list[Any] = field(default_factory=list)  # built ``transforms`` components, in order
    context: BuildContext | None = None

    @property
    def norm(self) -> Normalisation:
        """The query view's normalisation (both views' unless the encoder has per-view ones)."""
        return view_norm(self.encoder, "query")

    def norm_for(self, view: str) -> Normalisation:
        return view_norm(self.encoder, view)

    def tensors(self) -> dict[str, Any]:
        return model_tensors(self.encoder, self.loss)

    def record(self, **extra: Any) -> dict[str, Any]:
        """The checkpoint record: what a user needs to use these weights without the run."""
        return model_record(self.config.to_dict(), self.encoder, self.dataset, **extra)

    def save(self, path: str | Path, **extra: Any) -> None:
        save_weights(path, self.tensors(), self.record(**extra))

    def load(self, path: str | Path) -> dict[str, Any]:
        """Load weights strictly from a geokit checkpoint; returns its record."""
        return load_model_weights(path, self.encoder, self.loss)


def build(config: Config, *, dataset: CrossViewDataset | None = None, for_checkpoint: bool = False) -> Parts:
    """Build dataset, transforms, encoder and loss as configured, in that order (the sampler is
    built by the trainer, metrics and re-rankers by evaluation), each factory that declares a
    ``context`` parameter receiving a :class:`BuildContext`.

    :param for_checkpoint: weights will be loaded from a checkpoint, so the encoder is built
        without its initial weights (see :data:`INITIAL_WEIGHT_OPTIONS`).
    """
    if dataset is None:
        dataset = create("dataset", config.names["dataset"], config.dataset)
        dataset.name = config.names["dataset"]
    ds = dataset
    for view in VIEWS:  # a typo like [38400, 384] would allocate gigabytes per batch
        size = tuple(getattr(ds, f"{view}_size"))
        if not all(1 <= int(x) <= MAX_INPUT_SIDE for x in size):
            raise GeokitError(f"dataset.{view}_size {list(size)}: each side must be from 1 to {MAX_INPUT_SIDE} px")
    context = BuildContext(
        "transform",
        dataset_name=ds.name,
        query_size=tuple(ds.query_size),
        reference_size=tuple(ds.reference_size),
        query_view=ds.query_view,
        reference_view=ds.reference_view,
        _train=ds.train_set,
    )
    transforms = [build_component("transform", name, opts, context) for name, opts in config.transforms]
    context = context.for_kind(
        "encoder",
        query_size=transformed_size(ds.query_size, transforms, "query"),
        reference_size=transformed_size(ds.reference_size, transforms, "reference"),
    )
    enc_opts = without_initial_weights(config.encoder) if for_checkpoint else config.encoder
    encoder = build_component("encoder", config.names["encoder"], enc_opts, context)
    for attr in ("embedding_dim", "mean", "std"):
        if not hasattr(encoder, attr):
            raise GeokitError(
                f"encoder '{config.names['encoder']}' has no '{attr}' attribute (see geokit_register_encoders)"
            )
    context = context.for_kind("loss", embedding_dim=int(encoder.embedding_dim))
    loss = build_component("loss", config.names["loss"], config.loss, context) if "loss" in config.names else None
    if getattr(encoder, "loss_state", None) and loss is not None:  # evaluation may have no loss
        hand_over_loss_state(encoder.loss_state, loss, config.names["loss"])
    return Parts(config, dataset, encoder, loss, transforms, context)


def hand_over_loss_state(state: dict[str, Any], loss: Any, loss_name: str) -> list[str]:
    """Load the tensors an encoder found for the loss in its initial weights (``loss_state``,
    e.g. Sample4Geo's ``logit_scale``) into ``loss`` where its state dict has the same key and
    shape; log what was placed, warn in one line about the rest. Returns the placed keys."""
    import torch

    own = loss.state_dict()
    placed = sorted(
        k
        for k, v in state.items()
        if k in own and isinstance(v, torch.Tensor) and tuple(v.shape) == tuple(own[k].shape)
    )
    with torch.no_grad():
        for k in placed:
            own[k].copy_(state[k])
    if placed:
        shown = ", ".join(f"{k}={state[k].item():.4g}" if state[k].numel() == 1 else k for k in placed)
        log.info("loss '%s': %s from the encoder's initial weights", loss_name, shown)
    rest = sorted(set(state) - set(placed))
    if rest:
        log.warning(
            "the encoder's initial weights hold tensors for the loss that loss '%s' has no "
            "place for (other name or shape), ignored: %s",
            loss_name,
            ", ".join(rest[:6]) + (f" (+{len(rest) - 6} more)" if len(rest) > 6 else ""),
        )
    return placed
