"""Shared test set-up: offline, no progress bars, tiny generated data (dataset layouts:
``dataset_layouts.py``)."""

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
    from geokit._plugin_manager import reset_manager

    reset_manager()
    yield
    reset_manager()


@pytest.fixture
def dataset_layout(tmp_path_factory: pytest.TempPathFactory):
    """``make(name) -> options``: writes the tiny layout of bundled dataset ``name``
    (``dataset_layouts.LAYOUTS``) in a fresh folder and returns the dataset options that read it."""
    from dataset_layouts import LAYOUTS

    def make(name: str) -> dict:
        return LAYOUTS[name](tmp_path_factory.mktemp(name))

    return make
