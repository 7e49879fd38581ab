"""Loss ``infonce``: Sample4Geo's symmetric InfoNCE (§3).

L2-normalise both sides, logits = exp(logit_scale) · q · rᵀ with a learnable ``logit_scale``
initialised to log(1/temperature), cross-entropy with label smoothing towards the diagonal in
both directions, averaged. Usable on its own: ``InfoNCE()(query_emb, reference_emb)``.
"""
from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

import geokit


class InfoNCEOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(0.07, gt=0, description="initial temperature (logit_scale = log(1/t))")
    learnable_temperature: bool = True
    label_smoothing: float = Field(0.1, ge=0, lt=1)


def InfoNCE(temperature: float = 0.07, learnable_temperature: bool = True,
            label_smoothing: float = 0.1) -> Any:
    """Build the loss module (torch imported lazily so registration stays cheap)."""
    import torch
    import torch.nn.functional as F

    class _InfoNCE(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            init = torch.tensor(math.log(1.0 / temperature))
            if learnable_temperature:
                self.logit_scale = torch.nn.Parameter(init)
            else:
                self.register_buffer("logit_scale", init)
            self.label_smoothing = label_smoothing

        def forward(self, query: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
            q = F.normalize(query, dim=-1)
            r = F.normalize(reference, dim=-1)
            logits = self.logit_scale.exp() * q @ r.t()
            target = torch.arange(len(q), device=q.device)
            return 0.5 * (F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)
                          + F.cross_entropy(logits.t(), target, label_smoothing=self.label_smoothing))

    return _InfoNCE()


def build_infonce(options: InfoNCEOptions) -> Any:
    return InfoNCE(options.temperature, options.learnable_temperature, options.label_smoothing)


@geokit.hookimpl
def geokit_register_losses(registry):
    registry.add("infonce", build_infonce, options=InfoNCEOptions,
                 summary="symmetric InfoNCE, learnable temperature, label smoothing 0.1 (Sample4Geo)")
