"""Symmetric InfoNCE against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geokit.registry import create
from geokit.testing import check_loss


def reference_infonce(q: np.ndarray, r: np.ndarray, scale: float, eps: float) -> float:
    """Sample4Geo §3 written out: label-smoothed CE in both directions, averaged."""
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    r = r / np.linalg.norm(r, axis=1, keepdims=True)
    logits = scale * q @ r.T
    n = len(q)

    def ce(lg: np.ndarray) -> float:
        logp = lg - np.log(np.exp(lg).sum(1, keepdims=True))
        target = np.full((n, n), eps / n) + np.eye(n) * (1 - eps)
        return float(-(target * logp).sum(1).mean())

    return 0.5 * (ce(logits) + ce(logits.T))


def test_identity_pairs_closed_form():
    # q = r = I (2-d): each row's logits are [s, 0], so the loss is log(1 + e^-s) + 0.05·s.
    loss = create("loss", "infonce")
    s = 1 / 0.07
    value = loss(torch.eye(2), torch.eye(2)).item()
    assert value == pytest.approx(math.log1p(math.exp(-s)) + 0.05 * s, rel=1e-6)


def test_matches_written_out_formula_and_is_symmetric():
    rng = np.random.default_rng(0)
    q, r = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    loss = create("loss", "infonce", {"label_smoothing": 0.1})
    got = loss(torch.tensor(q, dtype=torch.float64), torch.tensor(r, dtype=torch.float64)).item()
    assert got == pytest.approx(reference_infonce(q, r, 1 / 0.07, 0.1), rel=1e-5)
    # Swapping the views transposes the logits: the average of both directions is unchanged.
    swapped = loss(torch.tensor(r), torch.tensor(q)).item()
    assert swapped == pytest.approx(got, rel=1e-5)


def test_temperature_is_learnable_and_initialised_to_one_over_0_07():
    loss = create("loss", "infonce")
    assert loss.logit_scale.requires_grad
    assert loss.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    fixed = create("loss", "infonce", {"learnable_temperature": False})
    assert not any(p.requires_grad for p in fixed.parameters())
    check_loss(fixed, symmetric=True)
