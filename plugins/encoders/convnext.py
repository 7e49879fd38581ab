"""Encoder ``convnext``: a thin adapter over timm (Sample4Geo §2). Any timm model name works,
not only ConvNeXt, ViTs included.

- ``pool: avg`` (default): timm's own pooled features (``num_classes=0``): for ConvNeXt global
  average pool, head LayerNorm, flatten, 1024-d for ConvNeXt-Base; for a ViT whatever its
  ``global_pool`` is (the class token for most). ``gem`` and ``netvlad`` pool the unpooled final
  features (a CNN's map after timm's head norm, a ViT's patch tokens) with a learned head, see
  ``geokit_plugins.encoders._timm_heads``; ``netvlad`` takes ``clusters``, ``cluster_dim`` and ``pool_dim``.
- ``shared: true`` (default): one network embeds both views, state-dict keys ``model.*`` (and
  ``pool.*`` for a learned head). ``shared: false``: one branch per view (the paper's
  weight-sharing ablation), ``query.model.*`` and ``reference.model.*``, both starting from the
  same initial weights; ``forward(images, view=...)`` routes by view.
- Input sizes: CNNs take any size of at least their total stride. ViTs are built with timm's
  ``dynamic_img_size=True`` (and ``dynamic_img_pad=True``) where the model supports them:
  position embeddings are interpolated to each input's patch grid and a size that is not a
  multiple of the patch is padded, so each view may have its own size; at the model's own size
  the output is exactly timm's usual one. Models without them (e.g. CaiT, TNT) accept only the
  size they were built for; another size is reported as an error naming the dataset sizes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

import geokit
from geokit.errors import GeokitError

VIEWS = ("query", "reference")
BRANCHES = tuple(f"{v}." for v in VIEWS)  # state-dict prefixes of shared: false
BACKBONES = tuple(f"{v}.model." for v in VIEWS)


class ConvNextOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field("convnext_base.fb_in22k_ft_in1k_384", description="timm model name (arch.tag)")
    pretrained: bool = Field(True, description="load timm's pretrained weights (needs the hub)")
    weights: Path | None = Field(None, description="local weights file (.safetensors/.pth), loaded strictly")
    drop_path_rate: float = Field(0.0, ge=0, lt=1)
    grad_checkpointing: bool = Field(False, description="trade compute for memory")
    shared: bool = Field(True, description="one network for both views; false: one branch per view")
    pool: Literal["avg", "gem", "netvlad"] = Field(
        "avg",
        description="avg: timm's pooled features; gem: generalised mean (learned p); "
        "netvlad: soft-assignment VLAD head",
    )
    clusters: int | None = Field(None, ge=1, description="netvlad: number of clusters (default 16)")
    cluster_dim: int | None = Field(None, ge=1, description="netvlad: descriptor size per cluster (default 64)")
    pool_dim: int | None = Field(
        None, ge=1, description="netvlad: project to this embedding size (default clusters x cluster_dim)"
    )

    @model_validator(mode="after")
    def _netvlad_only(self) -> ConvNextOptions:
        given = [k for k in ("clusters", "cluster_dim", "pool_dim") if getattr(self, k) is not None]
        if given and self.pool != "netvlad":
            raise ValueError(f"{', '.join(given)} only apply to pool: netvlad (pool is {self.pool})")
        return self


def _create(timm: Any, options: ConvNextOptions, pretrained: bool) -> Any:
    """The timm backbone: pooled (avg) or unpooled (learned heads), ViTs with dynamic sizes."""
    kwargs: dict[str, Any] = {"num_classes": 0, "drop_path_rate": options.drop_path_rate}
    if options.pool != "avg":
        kwargs["global_pool"] = ""
    # ViTs: position embeddings follow the patch grid of each input size, and a size that is
    # not a multiple of the patch is padded (DINOv2's 14 px patches at 384 px); the model's own
    # size gives exactly its usual output. Models without these options get none.
    tries: tuple[dict[str, Any], ...] = (
        {"dynamic_img_size": True, "dynamic_img_pad": True},
        {"dynamic_img_size": True},
        {},
    )
    try:
        for extra in tries:
            try:
                return timm.create_model(options.model, pretrained=pretrained, **extra, **kwargs)
            except TypeError as exc:
                if not extra or not any(k in str(exc) for k in extra):
                    raise
    except TypeError as exc:
        if "global_pool" in str(exc):
            raise GeokitError(
                f"encoder.pool: timm model '{options.model}' cannot return unpooled "
                f"features (global_pool=''), so pool: {options.pool} does not apply; "
                "use pool: avg"
            ) from None
        raise


def build_convnext(options: ConvNextOptions) -> Any:
    """timm backbone with a pooled embedding (ConvNeXt-Base by default), shared by both views
    unless ``shared: false``."""
    import copy
    import os

    import timm
    import torch

    from geokit.checkpoint import drop_prefix, load_at_prefixes, read_foreign_weights
    from geokit_plugins.encoders._timm_heads import GeM, NetVLADLite, local_features

    def backbone() -> Any:
        try:
            return _create(timm, options, options.pretrained and not options.weights)
        except RuntimeError as exc:
            if "Unknown model" in str(exc):
                names = timm.list_models(options.model.split(".")[0].split("_")[0] + "*")[:8]
                raise GeokitError(
                    f"encoder.model: timm has no model '{options.model}' (similar: {', '.join(names) or 'none'})"
                ) from None
            raise
        except GeokitError:
            raise
        except Exception as exc:  # noqa: BLE001 - hub unreachable, offline, ...
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            raise GeokitError(
                f"encoder: could not load pretrained weights for '{options.model}' "
                f"({type(exc).__name__}{', HF_HUB_OFFLINE=1' if offline else ''}). Set "
                "encoder.pretrained=false to start from scratch, or encoder.weights=PATH "
                "for a local file."
            ) from None

    def head(dim: int) -> tuple[torch.nn.Module | None, int]:
        if options.pool == "gem":
            return GeM(), dim
        if options.pool == "netvlad":
            h = NetVLADLite(dim, options.clusters or 16, options.cluster_dim or 64, options.pool_dim)
            return h, h.out_dim
        return None, dim

    def embed(model: Any, pool: Any, images: torch.Tensor) -> torch.Tensor:
        try:
            out = model(images)
        except AssertionError as exc:  # timm's fixed-size models (no dynamic_img_size)
            raise GeokitError(
                f"encoder '{options.model}' cannot embed images of "
                f"{images.shape[-2]}x{images.shape[-1]} px ({exc}); set dataset.query_size "
                "/ dataset.reference_size to a size it accepts (models without timm's "
                "dynamic_img_size take only the size they were built for)"
            ) from None
        return out if pool is None else pool(local_features(model, out))

    class Branch(torch.nn.Module):
        """One network: the timm backbone (``model``) and, for a learned pooling, ``pool``."""

        def __init__(self) -> None:
            super().__init__()
            self.model = backbone()
            pool, self.embedding_dim = head(int(self.model.num_features))
            if pool is not None:
                self.pool = pool

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return embed(self.model, getattr(self, "pool", None), images)

    class TimmEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            first = Branch()
            if options.shared:  # keys exactly as before: model.* (+ pool.*)
                self.model = first.model
                if options.pool != "avg":
                    self.pool = first.pool
            else:  # keys query.* and reference.*: the same initial weights, then trained apart
                self.query = first
                self.reference = copy.deepcopy(first)
            self.embedding_dim = first.embedding_dim
            # Tensors of the initial weights file that belong to the loss (Sample4Geo's
            # logit_scale): geokit.model.build hands them to the loss.
            self.loss_state: dict[str, torch.Tensor] = {}
            if options.weights:
                self._load_initial(Path(options.weights))
            if options.grad_checkpointing:
                for m in self._backbones():
                    m.set_grad_checkpointing(True)
            cfg = timm.data.resolve_model_data_config(first.model)
            self.mean = tuple(float(x) for x in cfg["mean"])
            self.std = tuple(float(x) for x in cfg["std"])
            info = getattr(first.model, "feature_info", None) or [{}]
            self.min_size = int(info[-1].get("reduction", 1))

        def _backbones(self) -> list[Any]:
            return [self.model] if options.shared else [self.query.model, self.reference.model]

        def _load_initial(self, path: Path) -> None:
            found = read_foreign_weights(path, what="encoder.weights")
            state = drop_prefix(found.model, "head.fc.")  # a classifier head has no place here
            # a geokit encoder of this very config; a shared encoder with the same head (both
            # branches start from it); else the backbone's own keys (timm, Sample4Geo), a learned
            # head starting fresh
            layouts = [[""], ["model."]] if options.shared else [[""], list(BRANCHES), list(BACKBONES)]
            load_at_prefixes(self, state, f"{path} ({found.layout})", layouts)
            self.loss_state = found.extra

        def forward(self, images: torch.Tensor, view: str | None = None) -> torch.Tensor:
            if min(images.shape[-2:]) < self.min_size:
                raise GeokitError(
                    f"encoder '{options.model}' needs images of at least "
                    f"{self.min_size}x{self.min_size} px, got {tuple(images.shape[-2:])}; "
                    "raise dataset.query_size / dataset.reference_size"
                )
            if options.shared:
                return embed(self.model, getattr(self, "pool", None), images)
            if view not in VIEWS:
                raise GeokitError(
                    f"encoder '{options.model}' with shared: false has one branch per view and must be "
                    f"called as encoder(images, view='query' or 'reference'), got view={view!r}"
                )
            return getattr(self, view)(images)

    return TimmEncoder()


@geokit.hookimpl
def geokit_register_encoders(registry):
    registry.add(
        "convnext",
        build_convnext,
        options=ConvNextOptions,
        summary="timm backbone (ConvNeXt-Base by default), pooled embedding (avg/gem/netvlad), "
        "shared by both views or one branch per view",
    )
