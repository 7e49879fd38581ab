"""End to end: train briefly on a tiny pairs dataset, `geokit index build` its reference tiles,
`geokit locate` its photos (CLI and the Python API), refuse a checkpoint that differs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from geokit import config
from geokit.cli import GeokitGroup
from geokit.cli._index import index as index_cmd
from geokit.cli._index import locate as locate_cmd
from geokit.errors import GeokitError
from geokit.testing import make_pairs_dataset, tiny_config

# the two commands as `geokit` registers them (COMMAND_MODULES), with its error handling
cli = GeokitGroup(commands={"index": index_cmd, "locate": locate_cmd})


pytestmark = pytest.mark.slow  # trains and indexes a small world once (about 6 s)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A trained checkpoint, a reference CSV of the training tiles with lat/lon, and an index."""
    from geokit.engine import train

    tmp = tmp_path_factory.mktemp("locate")
    root = make_pairs_dataset(tmp / "data", n_train=32, n_test=8, seed=3)
    cfg = config.resolve(tiny_config(root, train={"epochs": 6, "lr": 1e-3}, dataset={"augment": False}))
    train(cfg, tmp / "run", show=False)
    ckpt = tmp / "run" / "model.safetensors"
    with open(root / "train.csv") as fh:
        rows = list(csv.DictReader(fh))
    with open(tmp / "tiles.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "lat", "lon"])
        for r in rows:
            w.writerow([str(root / r["reference"]), r["lat"], r["lon"]])
    photos = [str(root / r["query"]) for r in rows]
    truth = [str(root / r["reference"]) for r in rows]
    index = tmp / "tiles.index"
    res = CliRunner().invoke(
        cli,
        ["index", "build", "--checkpoint", str(ckpt), "--references", str(tmp / "tiles.csv"), "--output", str(index)],
    )
    assert res.exit_code == 0, res.output
    assert "32 tiles, 32 with lat/lon" in res.output
    return {
        "tmp": tmp,
        "root": root,
        "ckpt": ckpt,
        "index": index,
        "photos": photos,
        "truth": truth,
        "rows": rows,
        "config": cfg,
    }


def test_localizer_finds_the_true_tile_first_for_most_photos(world):
    from geokit.retrieval.locate import Localizer

    loc = Localizer(world["index"])  # the checkpoint recorded in the index
    results = loc.locate(world["photos"], k=5)
    top1 = np.mean([r.best.path == t for r, t in zip(results, world["truth"])])
    assert top1 > 0.5, f"true tile first for only {top1:.0%} of photos"
    r = results[0]
    assert [c.rank for c in r.candidates] == [1, 2, 3, 4, 5]
    assert all(a.score >= b.score for a, b in zip(r.candidates, r.candidates[1:]))
    assert r.best.lat is not None and 47.9 < r.best.lat < 48.2
    # load once, call many times: a second call gives the same answer
    again = loc(world["photos"][:3], k=5)
    assert [x.best.index for x in again] == [x.best.index for x in results[:3]]


def test_locate_cli_formats_and_sheet(world):
    runner = CliRunner()
    photos = world["photos"][:3]
    res = runner.invoke(
        cli,
        [
            "locate",
            "--index",
            str(world["index"]),
            "--checkpoint",
            str(world["ckpt"]),
            "--top-k",
            "4",
            "--format",
            "json",
            "--radius",
            "500",
            "--sheet",
            str(world["tmp"] / "sheet.png"),
            *photos,
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert len(data) == 3 and len(data[0]["candidates"]) == 4
    assert {"rank", "path", "lat", "lon", "score"} <= set(data[0]["candidates"][0])
    assert "consensus" in data[0]
    from PIL import Image

    with Image.open(world["tmp"] / "sheet.png") as im:
        assert im.width > 4 * 128 and im.height >= 3 * 128
    res = runner.invoke(cli, ["locate", "--index", str(world["index"]), "--format", "csv", photos[0]])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert lines[0].startswith("photo,rank,path,lat,lon,score") and len(lines) == 1 + 5
    res = runner.invoke(cli, ["locate", "--index", str(world["index"]), photos[0]])
    assert res.exit_code == 0 and "consensus" in res.output


def test_a_different_checkpoint_is_refused(world):
    from geokit.checkpoint import load_weights, save_weights
    from geokit.retrieval.locate import Localizer

    tensors, record = load_weights(world["ckpt"])
    other = world["tmp"] / "other.safetensors"
    save_weights(other, tensors, {**record, "reference_size": [64, 64]})
    with pytest.raises(GeokitError, match="does not match the encoder"):
        Localizer(world["index"], other)
    key = next(k for k in tensors if k.startswith("encoder.") and tensors[k].is_floating_point())
    tensors = dict(tensors)
    tensors[key] = tensors[key] + 0.01
    save_weights(other, tensors, record)
    with pytest.raises(GeokitError, match="different weights"):
        Localizer(world["index"], other)
    res = CliRunner().invoke(
        cli, ["locate", "--index", str(world["index"]), "--checkpoint", str(other), world["photos"][0]]
    )
    assert res.exit_code != 0 and "different weights" in res.output


def test_index_the_reference_set_of_a_config_and_a_truncated_index(world, tmp_path):
    import yaml

    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(world["root"])))
    out = tmp_path / "test.index"
    res = CliRunner().invoke(
        cli,
        [
            "index",
            "build",
            "--checkpoint",
            str(world["ckpt"]),
            "--config",
            str(cfg),
            "--output",
            str(out),
            "--type",
            "hnsw",
            "--hnsw-m",
            "8",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "hnsw, 8 tiles, 8 with lat/lon" in res.output
    data = out.read_bytes()
    out.write_bytes(data[: len(data) * 2 // 3])
    res = CliRunner().invoke(cli, ["locate", "--index", str(out), world["photos"][0]])
    assert res.exit_code != 0 and "truncated" in res.output


def test_index_vectors_are_the_evaluation_embeddings(world, tmp_path):
    """One embedding path: the index of a dataset's references holds what `evaluate` computes."""
    from geokit.engine.evaluation import evaluate
    from geokit.index import IndexSpec, build_from_checkpoint, dataset_references

    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(world["config"].to_yaml())
    ix = build_from_checkpoint(
        world["ckpt"], dataset_references(cfg_file), tmp_path / "t.index", IndexSpec("flat"), show=False
    )
    res = evaluate(world["config"], world["ckpt"], show=False)
    np.testing.assert_allclose(ix.vectors, res.reference, atol=1e-5)
    assert ix.paths == list(res.eval_set.reference_paths)
