"""Contract tests parametrised over every registered component (timm-style).

A bundled component without test options here fails `test_every_bundled_component_is_covered`,
so a new registration cannot slip in untested.
"""

from __future__ import annotations

from pathlib import Path

import pytest

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
}
# Datasets that need a real on-disk layout are checked with `check_dataset` in their own test
# files, which build that layout; the pairs dataset is checked here.
DATASETS_ELSEWHERE = {
    name: Path(__file__).parent / f"test_datasets_{name}.py" for name in ("cvusa", "cvact", "vigor", "university1652")
}
DATASETS_ELSEWHERE["synthetic"] = Path(__file__).parent / "test_synthetic.py"


def names(kind: str) -> list[str]:
    return get_registry(kind).names()


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


@pytest.mark.parametrize("name", names("dataset"))
def test_dataset_conformance(name, pairs_root):
    if name == "pairs":
        check_dataset(name, {"root": str(pairs_root), "query_size": [32, 128], "reference_size": [32, 32]})
        return
    path = DATASETS_ELSEWHERE[name]
    assert path.is_file() and "check_dataset" in path.read_text(), (
        f"dataset '{name}' must be checked with geokit.testing.check_dataset in {path.name}"
    )


def test_every_bundled_component_is_covered():
    covered = {
        "encoder": ENCODERS,
        "loss": LOSSES,
        "sampler": SAMPLERS,
        "transform": TRANSFORMS,
        "metric": METRICS,
        "reranker": RERANKERS,
        "dataset": {"pairs": {}, **DATASETS_ELSEWHERE},
    }
    for kind, known in covered.items():
        for comp in get_registry(kind):
            if (comp.distribution or "").startswith("geokit "):
                assert comp.name in known, f"bundled {kind} '{comp.name}' has no conformance test options"
