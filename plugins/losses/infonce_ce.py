"""Loss ``infonce_ce``: symmetric InfoNCE plus cross-entropy over location classes (LPN, MCCG style).

A linear classifier on the embeddings predicts each pair's location class (its training
reference, so ``num_classes`` is the number of training references, from the build context);
the loss is InfoNCE + ``ce_weight`` · (CE(query) + CE(reference)) / 2. The classifier is a loss
parameter: trained with the encoder, saved under ``loss.``, unused at retrieval time.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

import geokit
from geokit_plugins.losses.infonce import InfoNCE, InfoNCEOptions


class InfoNCECEOptions(InfoNCEOptions):
    ce_weight: float = Field(1.0, ge=0, description="weight of the classification term")
    ce_label_smoothing: float = Field(0.0, ge=0, lt=1)


def build_infonce_ce(options: InfoNCECEOptions, context: Any) -> Any:
    import torch
    import torch.nn.functional as F

    contrastive = InfoNCE(
        options.temperature, options.learnable_temperature, options.label_smoothing, options.weight_column
    )

    class _InfoNCECE(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.contrastive = contrastive
            self.classifier = torch.nn.Linear(int(context.embedding_dim), int(context.num_classes))

        def forward(
            self,
            query: torch.Tensor,
            reference: torch.Tensor,
            references: torch.Tensor,
            columns: dict[str, torch.Tensor] | None = None,
        ) -> torch.Tensor:
            loss = self.contrastive(query, reference, columns=columns)
            ce = 0.5 * sum(
                F.cross_entropy(
                    self.classifier(F.normalize(x, dim=-1)), references, label_smoothing=options.ce_label_smoothing
                )
                for x in (query, reference)
            )
            return loss + options.ce_weight * ce

    return _InfoNCECE()


@geokit.hookimpl
def geokit_register_losses(registry):
    registry.add(
        "infonce_ce",
        build_infonce_ce,
        options=InfoNCECEOptions,
        summary="InfoNCE + cross-entropy over location classes (LPN/MCCG style)",
    )
