"""Loss ``infonce``: Sample4Geo's symmetric InfoNCE (§3), optionally weighted per pair.

L2-normalise both sides, logits = exp(logit_scale) · q · rᵀ with a learnable ``logit_scale``
initialised to log(1/temperature), cross-entropy with label smoothing towards the diagonal in
both directions, averaged. Usable on its own: ``InfoNCE()(query_emb, reference_emb)``.

With ``weight_column`` (a per-pair column of the training set, e.g. an IoU-like overlap as in
Game4Loc) each pair's loss is weighted: sum(w·l)/sum(w) over the batch, where l is the pair's
symmetric loss; equal weights give exactly the unweighted loss.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

import geokit
from geokit.errors import GeokitError


class InfoNCEOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(0.07, gt=0, description="initial temperature (logit_scale = log(1/t))")
    learnable_temperature: bool = True
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    weight_column: str | None = Field(
        None,
        description="per-pair column of the training set that weights "
        "each pair's loss (weighted mean); null: unweighted",
    )


def InfoNCE(
    temperature: float = 0.07,
    learnable_temperature: bool = True,
    label_smoothing: float = 0.1,
    weight_column: str | None = None,
) -> Any:
    """Build the loss module (torch imported lazily so registration stays cheap)."""
    import torch
    import torch.nn.functional as F

    def symmetric(logits: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
        return 0.5 * (
            F.cross_entropy(logits, target, label_smoothing=label_smoothing, reduction=reduction)
            + F.cross_entropy(logits.t(), target, label_smoothing=label_smoothing, reduction=reduction)
        )

    class _InfoNCE(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            init = torch.tensor(math.log(1.0 / temperature))
            if learnable_temperature:
                self.logit_scale = torch.nn.Parameter(init)
            else:
                self.register_buffer("logit_scale", init)
            self.label_smoothing = label_smoothing
            self.weight_column = weight_column

        def forward(
            self, query: torch.Tensor, reference: torch.Tensor, columns: dict[str, torch.Tensor] | None = None
        ) -> torch.Tensor:
            q = F.normalize(query, dim=-1)
            r = F.normalize(reference, dim=-1)
            logits = self.logit_scale.exp() * q @ r.t()
            target = torch.arange(len(q), device=q.device)
            if self.weight_column is None:
                return symmetric(logits, target, "mean")
            w = _weights(columns, self.weight_column, len(q)).to(logits.dtype)
            if bool((w == w[0]).all()):  # equal weights: exactly the unweighted loss
                return symmetric(logits, target, "mean")
            return (w * symmetric(logits, target, "none")).sum() / w.sum()

    return _InfoNCE()


def _weights(columns: Any, name: str, n: int) -> Any:
    if not columns or name not in columns:
        have = ", ".join(sorted(columns or {})) or "none"
        raise GeokitError(
            f"loss.weight_column: the training set has no per-pair column '{name}' "
            f"(columns: {have}); for the pairs dataset add a numeric '{name}' column to train.csv"
        )
    w = columns[name].reshape(n)
    if not bool(((w >= 0) & w.isfinite()).all()) or not bool(w.sum() > 0):
        raise GeokitError(
            f"loss.weight_column: column '{name}' must hold finite weights >= 0 with a positive sum in every batch"
        )
    return w


def build_infonce(options: InfoNCEOptions) -> Any:
    return InfoNCE(options.temperature, options.learnable_temperature, options.label_smoothing, options.weight_column)


@geokit.hookimpl
def geokit_register_losses(registry):
    registry.add(
        "infonce",
        build_infonce,
        options=InfoNCEOptions,
        summary="symmetric InfoNCE, learnable temperature, label smoothing 0.1 (Sample4Geo)",
    )
