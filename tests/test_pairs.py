"""The `pairs` dataset: what it reads, and a clear error for every kind of bad input."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from geokit.cli import cli
from geokit.errors import GeokitError
from geokit.registry import create
from geokit.testing import check_dataset, make_pairs_dataset, tiny_config


@pytest.fixture
def root(tmp_path):
    return make_pairs_dataset(tmp_path / "data", n_train=6, n_test=4)


def dataset(root, **opts):
    return create("dataset", "pairs", {"root": str(root), "query_size": [32, 128], "reference_size": [32, 32], **opts})


def test_reads_pairs_references_and_gps(root):
    ds = dataset(root)
    tr = ds.train_set()
    assert len(tr) == 6 and len(tr.reference_paths) == 6
    assert tr.reference_gps.shape == (6, 2) and tr.reference_gps[0, 0] == pytest.approx(48.0)
    es = ds.eval_set()
    assert es.name == "test" and len(es.query_paths) == 4
    np.testing.assert_array_equal(es.positives(), np.arange(4))
    check_dataset(ds)


def test_shared_references_and_val_split(tmp_path):
    root = make_pairs_dataset(tmp_path / "d", n_train=4, n_test=3, val=True)
    lines = (root / "train.csv").read_text().splitlines()
    # Two queries looking at the same reference tile (VIGOR-style).
    _q0, r0, lat0, lon0 = lines[1].split(",")
    lines.append(f"{lines[2].split(',')[0]},{r0},{lat0},{lon0}")
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    ds = dataset(root)
    tr = ds.train_set()
    assert len(tr) == 5 and len(tr.reference_paths) == 4 and tr.pair_reference[-1] == 0
    assert ds.splits == ("val", "test") and ds.eval_set("val").name == "val"
    with pytest.raises(GeokitError, match="has no split 'dev'"):
        ds.eval_set("dev")


def test_works_without_gps(tmp_path):
    root = make_pairs_dataset(tmp_path / "d", n_train=4, n_test=3, gps=False)
    assert dataset(root).train_set().reference_gps is None


def edit_csv(root, split, fn):
    path = root / f"{split}.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(fn(lines)) + "\n")
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda ls: [ls[0].replace("reference", "ref")] + ls[1:],
            r"train.csv: missing column 'reference' \(found: query, ref, lat, lon\)",
        ),
        (
            lambda ls: ls[:3] + ["train/nope.png" + ls[3][ls[3].index(",") :]] + ls[4:],
            r"train.csv line 4: image not found: .*nope.png",
        ),
        (
            lambda ls: ls[:2] + [ls[2].rsplit(",", 2)[0] + ",north,11.0"] + ls[3:],
            r"train.csv line 3: lat 'north' is not a number",
        ),
        (
            lambda ls: ls[:2] + [ls[2].rsplit(",", 2)[0] + ",95.5,11.0"] + ls[3:],
            r"train.csv line 3: lat 95.5 is outside \[-90, 90\]",
        ),
        (lambda ls: ls[:2] + [ls[2].rsplit(",", 2)[0] + ",45,181"] + ls[3:], r"train.csv line 3: lon 181.0 is outside"),
        (lambda ls: [ls[0]], r"train.csv: no rows after the header"),
        (
            lambda ls: [",".join(ls[0].split(",")[:3])] + [",".join(x.split(",")[:3]) for x in ls[1:]],
            "only one of the columns lat/lon",
        ),
    ],
)
def test_bad_csv_errors_name_file_and_line(root, edit, message):
    edit_csv(root, "train", edit)
    with pytest.raises(GeokitError, match=message):
        dataset(root).train_set()


def test_missing_split_file_and_root(root, tmp_path):
    (root / "test.csv").unlink()
    with pytest.raises(GeokitError, match=r"test.csv not found \(expected a CSV"):
        dataset(root).eval_set()
    with pytest.raises(GeokitError, match="dataset.root: folder not found"):
        dataset(tmp_path / "missing")


def test_inconsistent_gps_for_one_reference(root):
    def dup(ls):
        q1 = ls[2].split(",")[0]
        r0 = ls[1].split(",")[1]
        return ls + [f"{q1},{r0},10.0,10.0"]

    edit_csv(root, "train", dup)
    with pytest.raises(GeokitError, match="has lat/lon .* here but .* on line 2"):
        dataset(root).train_set()


def test_unreadable_image_is_a_clear_cli_error(root, tmp_path):
    shutil.copy(root / "train" / "r0000.png", tmp_path / "keep.png")
    (root / "train" / "r0001.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(root, train={"epochs": 1, "batch_size": 2})))
    res = CliRunner().invoke(cli, ["train", "--config", str(cfg), "--output", str(tmp_path / "out")])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "r0001.png" in res.output and ("cannot decode image" in res.output or "corrupt" in res.output)
