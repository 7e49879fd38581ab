"""Encoder ``convnext``: a thin adapter over timm, one network for both views (Sample4Geo §2).

The embedding is timm's pooled feature vector (``num_classes=0``: global average pool, head
LayerNorm, flatten), 1024-d for ConvNeXt-Base. Any timm model name works, not only ConvNeXt.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

import geokit
from geokit.errors import GeokitError


class ConvNextOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field("convnext_base.fb_in22k_ft_in1k_384", description="timm model name (arch.tag)")
    pretrained: bool = Field(True, description="load timm's pretrained weights (needs the hub)")
    weights: Path | None = Field(None, description="local weights file (.safetensors/.pth), loaded strictly")
    drop_path_rate: float = Field(0.0, ge=0, lt=1)
    grad_checkpointing: bool = Field(False, description="trade compute for memory")


def build_convnext(options: ConvNextOptions) -> Any:
    """timm backbone with pooled embeddings (ConvNeXt-Base by default), shared by both views."""
    import os

    import timm
    import torch

    from geokit.checkpoint import load_module_strict, read_foreign_weights

    class TimmEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            try:
                self.model = timm.create_model(options.model, pretrained=options.pretrained and not options.weights,
                                               num_classes=0, drop_path_rate=options.drop_path_rate)
            except RuntimeError as exc:
                if "Unknown model" in str(exc):
                    names = timm.list_models(options.model.split(".")[0].split("_")[0] + "*")[:8]
                    raise GeokitError(f"encoder.model: timm has no model '{options.model}'"
                                      f" (similar: {', '.join(names) or 'none'})") from None
                raise
            except Exception as exc:  # hub unreachable, offline, ...
                offline = os.environ.get("HF_HUB_OFFLINE") == "1"
                raise GeokitError(
                    f"encoder: could not load pretrained weights for '{options.model}' "
                    f"({type(exc).__name__}{', HF_HUB_OFFLINE=1' if offline else ''}). Set "
                    "encoder.pretrained=false to start from scratch, or encoder.weights=PATH "
                    "for a local file.") from None
            # Tensors of the initial weights file that belong to the loss (Sample4Geo's
            # logit_scale): geokit.model.build hands them to the loss.
            self.loss_state: dict[str, torch.Tensor] = {}
            if options.weights:
                found = read_foreign_weights(options.weights, what="encoder.weights")
                state = {k: v for k, v in found.model.items() if not k.startswith("head.fc.")}
                load_module_strict(self.model, state, f"{options.weights} ({found.layout})")
                self.loss_state = found.extra
            if options.grad_checkpointing:
                self.model.set_grad_checkpointing(True)
            cfg = timm.data.resolve_model_data_config(self.model)
            self.mean = tuple(float(x) for x in cfg["mean"])
            self.std = tuple(float(x) for x in cfg["std"])
            self.embedding_dim = int(self.model.num_features)
            info = getattr(self.model, "feature_info", None) or [{}]
            self.min_size = int(info[-1].get("reduction", 1))

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            if min(images.shape[-2:]) < self.min_size:
                raise GeokitError(f"encoder '{options.model}' needs images of at least "
                                  f"{self.min_size}x{self.min_size} px, got {tuple(images.shape[-2:])}; "
                                  "raise dataset.query_size / dataset.reference_size")
            return self.model(images)

    return TimmEncoder()


@geokit.hookimpl
def geokit_register_encoders(registry):
    registry.add("convnext", build_convnext, options=ConvNextOptions,
                 summary="timm backbone (ConvNeXt-Base by default), pooled embedding, shared by both views")
