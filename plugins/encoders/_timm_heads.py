"""Pooling heads over any timm backbone's final features (used by the ``convnext`` encoder).

A backbone built with ``num_classes=0, global_pool=''`` returns its final features unpooled: a
CNN's map ``(B, C, H, W)`` (``(B, H, W, C)`` for models whose ``output_fmt`` is ``NHWC``, e.g.
Swin) or a ViT's tokens ``(B, N, C)``. :func:`local_features` turns each into ``(B, L, C)`` local
descriptors (a ViT's class/register tokens dropped), which the heads pool at any input size:

- :class:`GeM`: generalised mean ``(mean_l clamp(x, eps)^p)^(1/p)`` with a learnable ``p``
  (initially 3; p = 1 is average pooling, p → ∞ max pooling). ``C`` dimensions. Features after
  a LayerNorm (ConvNeXt's head norm, a ViT's final norm) are signed; as in CNN retrieval, the
  clamp keeps only their positive part.
- :class:`NetVLADLite`: soft-assignment VLAD. Descriptors are reduced to ``cluster_dim`` by a
  linear layer, softly assigned to ``clusters`` learned centroids, their residuals summed per
  centroid, each centroid's sum L2-normalised, then all flattened and L2-normalised
  (``clusters · cluster_dim`` dims), optionally projected linearly to ``out_dim``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def local_features(model: Any, feats: torch.Tensor) -> torch.Tensor:
    """``(B, L, C)`` local descriptors from an unpooled timm output (see the module docstring)."""
    if feats.ndim == 3:  # ViT-style tokens: drop class/register tokens
        return feats[:, int(getattr(model, "num_prefix_tokens", 0)) :]
    if feats.ndim == 4:
        if getattr(model, "output_fmt", "NCHW") == "NHWC":
            return feats.flatten(1, 2)
        return feats.flatten(2).transpose(1, 2)
    raise ValueError(f"unpooled features of shape {tuple(feats.shape)}: expected a map or tokens")


class GeM(nn.Module):
    """Generalised-mean pooling of ``(B, L, C)`` descriptors with a learnable exponent ``p``."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.float()
        return x.float().clamp(min=self.eps).pow(p).mean(dim=1).pow(1.0 / p)


class NetVLADLite(nn.Module):
    """Soft-assignment VLAD over ``(B, L, C)`` descriptors (any ``L``), see the module docstring."""

    def __init__(self, in_dim: int, clusters: int = 16, cluster_dim: int = 64, out_dim: int | None = None) -> None:
        super().__init__()
        self.reduce = nn.Linear(in_dim, cluster_dim)
        self.assign = nn.Linear(in_dim, clusters)
        self.centroids = nn.Parameter(0.1 * torch.randn(clusters, cluster_dim))
        self.project = nn.Linear(clusters * cluster_dim, out_dim) if out_dim else None
        self.out_dim = int(out_dim or clusters * cluster_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        a = self.assign(x).softmax(dim=-1)  # (B, L, K)
        f = self.reduce(x)  # (B, L, d)
        v = torch.einsum("blk,bld->bkd", a, f) - a.sum(dim=1).unsqueeze(-1) * self.centroids
        v = F.normalize(v, dim=-1).flatten(1)  # intra-normalisation
        v = F.normalize(v, dim=-1)
        return self.project(v) if self.project is not None else v
