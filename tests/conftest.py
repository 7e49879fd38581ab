"""Shared test set-up: offline, no progress bars, tiny generated data."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("GEOKIT_PROGRESS", "0")

import pytest

from geokit.testing import make_pairs_dataset


@pytest.fixture(scope="session")
def pairs_root(tmp_path_factory: pytest.TempPathFactory):
    """A small learnable pairs dataset (train/val/test with GPS), shared read-only by tests."""
    return make_pairs_dataset(tmp_path_factory.mktemp("pairs"), n_train=48, n_test=24, val=True)


@pytest.fixture
def fresh_plugins():
    """Reload plugins around a test that changes what is installed or registered."""
    from geokit.plugins import reset_manager

    reset_manager()
    yield
    reset_manager()
