"""Contract tests parametrised over every registered component (timm-style).

A bundled component without test options here fails `test_every_bundled_component_is_covered`,
so a new registration cannot slip in untested. Datasets are checked on the tiny layouts of
``dataset_layouts.LAYOUTS`` (one per bundled dataset).
"""

from __future__ import annotations

import pytest
from dataset_layouts import LAYOUTS

from geokit.registry import get_registry
from geokit.testing import (
    check_dataset,
    check_encoder,
    check_loss,
    check_metric,
    check_reranker,
    check_sampler,
    check_transform,
)

ENCODERS = {"convnext": {"model": "convnext_atto", "pretrained": False}}
LOSSES = {"infonce": {}, "infonce_ce": {}}
SAMPLERS = {"random": {}, "gps": {}, "dss": {"every": 1}, "inbatch": {}}
TRANSFORMS = {"limited_fov": {"fov": 90}}
METRICS = {"metres": {}}
RERANKERS = {"qe": {}}
# More option sets per component: a contract must hold for its variants too.
VARIANTS = {
    ("loss", "infonce"): [{"weight_column": "weight"}],
    ("transform", "limited_fov"): [{"fov": 360}, {"fov": 45, "views": ["query", "reference"]}],
    ("dataset", "cvusa"): [{"augment": False}],
    ("dataset", "cvact"): [{"split": "test"}],
    ("dataset", "vigor"): [{"mode": "cross"}],
    # one size for both views (the paper's 384x384): check_dataset loads training drone images at
    # query_size, which in sat2drone is the satellite view's size
    ("dataset", "university1652"): [{"direction": "sat2drone", "protocol": "sample4geo", "query_size": [8, 8]}],
    ("dataset", "synthetic"): [{"augment": "geometry", "in_memory": False}],
}


def names(kind: str) -> list[str]:
    return get_registry(kind).names()


def bundled(kind: str, name: str) -> bool:
    return (get_registry(kind).get(name).distribution or "").startswith("geokit ")


@pytest.mark.parametrize("name", names("encoder"))
def test_encoder_conformance(name):
    check_encoder(name, ENCODERS.get(name, {}))


@pytest.mark.parametrize("name", names("loss"))
def test_loss_conformance(name):
    for options in [LOSSES.get(name, {}), *VARIANTS.get(("loss", name), [])]:
        check_loss(name, options, symmetric=True)


@pytest.mark.parametrize("name", names("transform"))
def test_transform_conformance(name):
    for options in [TRANSFORMS.get(name, {}), *VARIANTS.get(("transform", name), [])]:
        check_transform(name, options)


@pytest.mark.parametrize("name", names("metric"))
def test_metric_conformance(name):
    check_metric(name, METRICS.get(name, {}))


@pytest.mark.parametrize("name", names("reranker"))
def test_reranker_conformance(name):
    check_reranker(name, RERANKERS.get(name, {}))


@pytest.mark.parametrize("name", names("sampler"))
def test_sampler_conformance(name):
    check_sampler(name, SAMPLERS.get(name, {}))


# Every registered dataset, and every one with a layout: a bundled dataset that stops being
# registered fails here (unknown name) instead of dropping out of the parametrisation.
@pytest.mark.parametrize("name", sorted(set(names("dataset")) | set(LAYOUTS)))
def test_dataset_conformance(name, dataset_layout):
    if name not in LAYOUTS:
        assert not bundled("dataset", name), f"bundled dataset '{name}' has no layout in dataset_layouts.LAYOUTS"
        pytest.skip(
            f"third-party dataset '{name}' has no layout fixture here (dataset_layouts.LAYOUTS); "
            "its own tests should run geokit.testing.check_dataset on a layout they write"
        )
    options = dataset_layout(name)
    for variant in [{}, *VARIANTS.get(("dataset", name), [])]:
        check_dataset(name, {**options, **variant})


def test_every_bundled_component_is_covered():
    covered = {
        "encoder": ENCODERS,
        "loss": LOSSES,
        "sampler": SAMPLERS,
        "transform": TRANSFORMS,
        "metric": METRICS,
        "reranker": RERANKERS,
        "dataset": LAYOUTS,
    }
    for kind, known in covered.items():
        for comp in get_registry(kind):
            if (comp.distribution or "").startswith("geokit "):
                assert comp.name in known, f"bundled {kind} '{comp.name}' has no conformance test options"
