"""Each benchmark's protocol, end to end through ``geokit.metrics.retrieval_metrics``: planted
embeddings whose rankings are chosen by hand, metrics compared with values computed by hand.

The references are one-hot vectors, so a query vector *is* its row of similarities: planting a
ranking means writing down scores.
"""

from __future__ import annotations

import numpy as np
import pytest
from dataset_layouts import make_cvact, make_cvusa, make_u1652, make_vigor

from geokit.data import EvalSet
from geokit.metrics import retrieval_metrics
from geokit.registry import create


def metrics(es: EvalSet, scores: np.ndarray) -> dict[str, float]:
    """What ``geokit evaluate`` computes for ``es`` when query i scores reference j at scores[i, j]."""
    scores = np.asarray(scores, dtype=np.float64)
    assert scores.shape == (len(es.query_paths), len(es.reference_paths))
    query = scores + 1e-3  # all positive, so normalisation keeps every ranking (and tie)
    reference = np.eye(len(es.reference_paths))
    return retrieval_metrics(
        query, reference, es.positives(), semi_positives=es.semi_positives, ap=es.multi_positive or None
    )


def ranked(es: EvalSet, order_by_query: list[list[int]]) -> np.ndarray:
    """Scores from an explicit ranking (reference indices, best first) per query."""
    s = np.zeros((len(es.query_paths), len(es.reference_paths)))
    for i, order in enumerate(order_by_query):
        for place, j in enumerate(order):
            s[i, j] = 1.0 - 0.01 * (place + 1)
    return s


def approx(d: dict[str, float], **expected: float) -> None:
    for key, value in expected.items():
        assert d[key] == pytest.approx(value, abs=1e-9), key


def test_cvusa_protocol(tmp_path):
    make_cvusa(tmp_path)
    es = create("dataset", "cvusa", {"root": str(tmp_path)}).eval_set()
    # true reference of query i is reference i (ids 7..10 in order); ranks 0, 1, 3, 0
    s = ranked(es, [[0, 1, 2, 3], [2, 1, 0, 3], [0, 1, 3, 2], [3, 0, 1, 2]])
    m = metrics(es, s)
    approx(m, **{"R@1": 50.0, "R@5": 100.0, "R@10": 100.0, "R@1%": 50.0})  # R@1%: k = max(1, 4 // 100)
    assert m["queries"] == 4 and m["references"] == 4 and "AP" not in m and "hit_rate" not in m
    # ties count for the query
    s[1] = [0.5, 0.5, 0.5, 0.5]
    approx(metrics(es, s), **{"R@1": 75.0})


def test_cvact_val_and_test_protocols(tmp_path):
    make_cvact(tmp_path)
    ds = create("dataset", "cvact", {"root": str(tmp_path)})
    val = ds.eval_set("val")
    approx(metrics(val, ranked(val, [[0, 1, 2], [0, 2, 1], [1, 0, 2]])), **{"R@1": 100 / 3, "R@5": 100.0})
    test = ds.eval_set("test")
    approx(
        metrics(test, ranked(test, [[0, 1, 2, 3], [1, 2, 3, 0], [2, 0, 1, 3], [0, 1, 2, 3]])),
        **{"R@1": 75.0, "R@5": 100.0},
    )


@pytest.mark.parametrize("mode", ["same", "cross"])
def test_vigor_protocol_both_hit_rates(tmp_path, mode):
    make_vigor(tmp_path)
    es = create("dataset", "vigor", {"root": str(tmp_path), "mode": mode}).eval_set()
    n_q, n_r = len(es.query_paths), len(es.reference_paths)
    pos, semi = es.query_labels, es.semi_positives
    negatives = [[j for j in range(n_r) if j != pos[i] and j not in semi[i]] for i in range(n_q)]
    orders = []
    for i in range(n_q):
        p, s1, neg = int(pos[i]), int(semi[i, 0]), negatives[i]
        if i == 1:  # semi-positive first, then the positive: rank 1, hit, strict hit
            order = [s1, p]
        elif i == 2:  # semi-positive, a negative, the positive: rank 2, hit, strict miss
            order = [s1, neg[0], p]
        elif i == 3:  # a negative first, then the positive: rank 1, miss, strict miss
            order = [neg[0], p]
        else:  # positive first: rank 0, hit, strict hit
            order = [p]
        orders.append(order + [j for j in range(n_r) if j not in order])
    m = metrics(es, ranked(es, orders))
    n_top = n_q - 3  # queries 0 and 4.. have the positive first
    approx(
        m,
        **{
            "R@1": 100 * n_top / n_q,
            "R@5": 100.0,
            "R@1%": 100 * n_top / n_q,
            "hit_rate": 100 * (n_q - 1) / n_q,
            "hit_rate_strict": 100 * (n_q - 2) / n_q,
        },
    )
    assert m["references"] == (20 if mode == "same" else 10)  # the whole gallery of the test cities


def _u1652(tmp_path, **options):
    return create("dataset", "university1652", {"root": str(tmp_path), **options}).eval_set()


def _by_label(es: EvalSet, labels_in_order: list[list[tuple[int, int]]]) -> np.ndarray:
    """Rankings written as (label, k-th image of that label) pairs; missing labels are skipped."""
    index: dict[tuple[int, int], int] = {}
    seen: dict[int, int] = {}
    for j, lab in enumerate(es.reference_labels.tolist()):
        index[(lab, seen.get(lab, 0))] = j
        seen[lab] = seen.get(lab, 0) + 1
    return ranked(es, [[index[x] for x in order if x in index] for order in labels_in_order])


def test_u1652_drone2sat_both_protocols(tmp_path):
    make_u1652(tmp_path)
    # queries: 2 drone images of building 10, 2 of building 11; gallery tiles 10, 11 (+ distractor 12)
    orders = [
        [(12, 0), (10, 0), (11, 0)],
        [(10, 0), (11, 0), (12, 0)],
        [(10, 0), (12, 0), (11, 0)],
        [(11, 0), (10, 0), (12, 0)],
    ]
    official = _u1652(tmp_path)
    m = metrics(official, _by_label(official, orders))
    # ranks 1, 0, 2, 0; single true match at 0-based place p: AP = (old + 1/(p+1)) / 2, old = 1 if p == 0 else 0
    approx(m, **{"R@1": 50.0, "R@5": 100.0, "AP": 100 * (0.25 + 1 + 1 / 6 + 1) / 4})
    s4g = _u1652(tmp_path, protocol="sample4geo")  # the distractor is junk: removed
    m = metrics(s4g, _by_label(s4g, orders))
    approx(m, **{"R@1": 75.0, "AP": 100 * (1 + 1 + 0.25 + 1) / 4})
    assert m["references"] == 2


def test_u1652_sat2drone_both_protocols(tmp_path):
    make_u1652(tmp_path)
    orders = [
        [(10, 0), (12, 0), (10, 1), (11, 0), (11, 1), (12, 1)],
        [(12, 0), (12, 1), (10, 0), (11, 0), (11, 1), (10, 1)],
    ]
    official = _u1652(tmp_path, direction="sat2drone")
    m = metrics(official, _by_label(official, orders))
    # query 10: true matches at places 0 and 2: 1/2·(1+1)/2 + 1/2·(1/2+2/3)/2
    ap0 = 0.5 * (1 + 1) / 2 + 0.5 * (1 / 2 + 2 / 3) / 2
    # query 11: true matches at places 3 and 4: 1/2·(0+1/4)/2 + 1/2·(1/4+2/5)/2
    ap1 = 0.5 * (0 + 1 / 4) / 2 + 0.5 * (1 / 4 + 2 / 5) / 2
    approx(m, **{"R@1": 50.0, "R@5": 100.0, "AP": 100 * (ap0 + ap1) / 2})
    s4g = _u1652(tmp_path, direction="sat2drone", protocol="sample4geo")
    m = metrics(s4g, _by_label(s4g, orders))
    # without building 12: query 10 at places 0, 1 (AP 1); query 11 at places 1, 2
    ap1 = 0.5 * (0 + 1 / 2) / 2 + 0.5 * (1 / 2 + 2 / 3) / 2
    approx(m, **{"R@1": 50.0, "AP": 100 * (1 + ap1) / 2})
    assert m["references"] == 4


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, maker, options, keys",
    [
        ("vigor", make_vigor, {"mode": "cross"}, {"hit_rate", "hit_rate_strict"}),
        ("university1652", make_u1652, {"direction": "sat2drone", "protocol": "sample4geo"}, {"AP"}),
    ],
)
def test_geokit_evaluate_on_a_benchmark_layout(tmp_path, name, maker, options, keys, monkeypatch):
    """The whole evaluate path (CLI, images at the view sizes, embeddings file) on a real layout."""
    import json

    import yaml
    from click.testing import CliRunner
    from safetensors.numpy import load_file

    from geokit.cli import cli
    from geokit.testing import tiny_config

    maker(tmp_path / "data")
    cfg = tiny_config(
        tmp_path / "data",
        dataset={
            "name": name,
            "root": str(tmp_path / "data"),
            "query_size": [32, 32],
            "reference_size": [32, 32],
            **options,
        },
    )
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "--config",
            str(tmp_path / "c.yaml"),
            "--output",
            str(tmp_path / "m.json"),
            "--save-embeddings",
            str(tmp_path / "e.safetensors"),
        ],
    )
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "m.json").read_text())
    assert keys <= set(m)
    emb = load_file(str(tmp_path / "e.safetensors"))
    es = create("dataset", name, {"root": str(tmp_path / "data"), **options}).eval_set()
    assert emb["query_labels"].tolist() == es.query_labels.tolist()
    assert emb["reference_labels"].tolist() == es.reference_labels.tolist()
    assert ("semi_positives" in emb) == (name == "vigor")
    # eval.bf16_screen reaches the metrics; both scans give the same numbers
    import geokit.engine.evaluation

    seen = []
    real = geokit.engine.evaluation.retrieval_metrics

    def spy(*args, **kwargs):
        seen.append(kwargs["bf16_screen"])
        return real(*args, **kwargs)

    monkeypatch.setattr(geokit.engine.evaluation, "retrieval_metrics", spy)
    for screen in ("false", "true"):
        res = CliRunner().invoke(
            cli,
            [
                "evaluate",
                "--config",
                str(tmp_path / "c.yaml"),
                "--output",
                str(tmp_path / f"m_{screen}.json"),
                "--set",
                f"eval.bf16_screen={screen}",
            ],
        )
        assert res.exit_code == 0, res.output
        assert json.loads((tmp_path / f"m_{screen}.json").read_text()) == m
    assert seen == [False, True]
