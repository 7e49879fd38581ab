"""Index build/save/load round trips for every type, search quality of the ANN types on easy
data, refusal of a foreign encoder, and clear errors for corrupt or truncated files."""

from __future__ import annotations

import numpy as np
import pytest

from geokit.errors import GeokitError
from geokit.index import GeoIndex, IndexSpec, build_index, read_references
from geokit.retrieval import search


def clustered(n=3000, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(60, dim))
    x = centres[rng.integers(0, 60, n)] + 0.3 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make(spec, x, meta=None, chunk=700):
    n = len(x)
    calls = []

    def embed(pos):
        calls.append(len(pos))
        return x[pos]

    ix = build_index(
        embed,
        n,
        x.shape[1],
        spec,
        paths=[f"t/{i}.png" for i in range(n)],
        latlon=np.c_[np.linspace(40, 41, n), np.linspace(10, 11, n)],
        meta=meta,
        chunk=chunk,
    )
    return ix, calls


@pytest.mark.parametrize(
    "spec",
    [
        IndexSpec("flat"),
        IndexSpec("flat", dtype="float16"),
        IndexSpec("ivf", nlist=32, nprobe=8),
        IndexSpec("ivfpq", nlist=32, m=8, nprobe=8),
        IndexSpec("hnsw", hnsw_m=16),
    ],
    ids=lambda s: f"{s.type}-{s.dtype}",
)
def test_round_trip_and_recall(tmp_path, spec):
    x = clustered()
    ix, calls = make(spec, x, meta={"note": "x"})
    assert sum(calls) == len(x), "every reference is embedded exactly once (training sample reused)"
    assert max(calls) <= 700
    path = tmp_path / "a.index"
    ix.save(path)
    back = GeoIndex.load(path)
    assert back.type == spec.type and len(back) == len(x) and back.paths[5] == "t/5.png"
    np.testing.assert_array_equal(back.latlon, ix.latlon)
    assert back.meta["note"] == "x" and back.meta["count"] == len(x)
    q = x[:200] + 0.05 * np.random.default_rng(1).normal(size=(200, x.shape[1])).astype(np.float32)
    _, exact = search(q, x, 10)
    _s1, i1 = ix.search(q, 10)
    _s2, i2 = back.search(q, 10)
    np.testing.assert_array_equal(i1, i2)
    recall1 = np.mean(i2[:, 0] == exact[:, 0])
    if spec.type == "flat" and spec.dtype == "float32":
        np.testing.assert_array_equal(i2, exact)
    else:
        assert recall1 >= (0.5 if spec.type == "ivfpq" else 0.9), recall1


def test_truncated_and_corrupt_files_are_clear_errors(tmp_path):
    ix, _ = make(IndexSpec("ivf", nlist=16), clustered(800))
    path = tmp_path / "a.index"
    ix.save(path)
    data = path.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 3):
        bad = tmp_path / f"cut{cut}.index"
        bad.write_bytes(data[:cut])
        with pytest.raises(GeokitError, match="truncated|corrupt|not a readable"):
            GeoIndex.load(bad)
    flipped = bytearray(data)
    flipped[-100] ^= 0xFF  # inside the faiss payload
    bad = tmp_path / "flip.index"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(GeokitError, match="checksum"):
        GeoIndex.load(bad)
    junk = tmp_path / "junk.index"
    junk.write_text("hello")
    with pytest.raises(GeokitError, match="not a readable geokit index"):
        GeoIndex.load(junk)
    with pytest.raises(GeokitError, match="not found"):
        GeoIndex.load(tmp_path / "missing.index")


def test_foreign_encoder_is_refused():
    record = {
        "encoder": {"name": "convnext", "model": "convnext_atto"},
        "embedding_dim": 32,
        "mean": [0, 0, 0],
        "std": [1, 1, 1],
        "query_size": [32, 128],
        "reference_size": [32, 32],
    }
    ix, _ = make(
        IndexSpec("flat"),
        clustered(100),
        meta={"encoder_record": record, "encoder_fingerprint": "abc", "checkpoint": "m.safetensors"},
    )
    ix.check_encoder(record, "abc")  # the same encoder passes
    with pytest.raises(GeokitError, match="reference_size"):
        ix.check_encoder({**record, "reference_size": [64, 64]}, "abc")
    with pytest.raises(GeokitError, match="different weights"):
        ix.check_encoder(record, "abd")


def test_spec_checks():
    with pytest.raises(GeokitError, match="divide"):
        IndexSpec("ivfpq", m=7).check(10000, 32)
    with pytest.raises(GeokitError, match="fewer than nlist"):
        IndexSpec("ivf", nlist=100).check(50, 32)
    assert IndexSpec("ivfpq").m_for(1024) == 64 and IndexSpec("ivfpq").m_for(320) == 64


def test_read_references_csv_and_folder(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")
    (tmp_path / "references.csv").write_text("path,lat,lon\n0.png,1.5,2\n1.png,-3,4\n2.png,5,6\n")
    refs = read_references(tmp_path)
    assert len(refs.paths) == 3 and refs.latlon[1].tolist() == [-3, 4]
    (tmp_path / "references.csv").write_text("path,lat,lon\n0.png,1.5,2\nmissing.png,1,1\n")
    with pytest.raises(GeokitError, match="line 3: image not found"):
        read_references(tmp_path / "references.csv")
    (tmp_path / "references.csv").write_text("path,lat,lon\n0.png,north,2\n")
    with pytest.raises(GeokitError, match="line 2"):
        read_references(tmp_path)
    (tmp_path / "references.csv").unlink()
    refs = read_references(tmp_path)  # a plain folder of images: no locations
    assert len(refs.paths) == 3 and np.isnan(refs.latlon).all()


def test_reference_csv_errors_name_file_and_line(tmp_path, monkeypatch):
    # the one core CSV reader (geokit._csv): UTF-8, numbers and size are checked, each error one
    # paragraph naming the file and the line
    from PIL import Image

    import geokit._csv

    Image.new("RGB", (8, 8)).save(tmp_path / "0.png")
    csv_file = tmp_path / "references.csv"
    csv_file.write_text("path,lat,lon\n0.png,north,2\n")
    with pytest.raises(GeokitError, match=r"references.csv line 2: lat 'north' is not a number"):
        read_references(csv_file)
    csv_file.write_text("path,lat,lon\n0.png,1,2\n0.png,45,181\n")
    with pytest.raises(GeokitError, match=r"references.csv line 3: lon 181.0 is outside \[-180, 180\]"):
        read_references(csv_file)
    csv_file.write_bytes(b"path,lat,lon\n0.png,1,2\n\xe9.png,1,2\n")  # Latin-1, not UTF-8: was a traceback
    with pytest.raises(GeokitError, match=r"references.csv line 3: not UTF-8 text \(byte 0xe9"):
        read_references(csv_file)
    csv_file.write_text("path,lat\n0.png,1\n")
    with pytest.raises(GeokitError, match="only one of the columns lat/lon"):
        read_references(csv_file)
    csv_file.write_text("file,lat,lon\n0.png,1,2\n")
    with pytest.raises(
        GeokitError, match=r"missing column 'path' \(found: file, lat, lon\); the header must name path"
    ):
        read_references(csv_file)
    csv_file.write_text("path,lat,lon\n0.png,1,2\n")
    assert read_references(csv_file).latlon.tolist() == [[1.0, 2.0]]
    monkeypatch.setattr(geokit._csv, "MAX_CSV_BYTES", 10)
    with pytest.raises(GeokitError, match=r"references.csv: 23 bytes is more than a CSV geokit reads \(10 bytes\)"):
        read_references(csv_file)


def test_index_defaults_have_one_source():
    # the CLI's options read their defaults and choices from IndexSpec (and the precision policy)
    from dataclasses import fields

    from geokit.cli._index import build
    from geokit.embedding import EMBEDDING_DTYPES
    from geokit.retrieval import TYPES

    options = {p.name: p for p in build.params}
    spec = {f.name: f.default for f in fields(IndexSpec)}
    for name in ("type", "dtype", "nlist", "nprobe", "m", "nbits", "hnsw_m", "ef_construction", "ef_search"):
        assert options[name].default == spec[name], name
    assert tuple(options["type"].type.choices) == TYPES == ("flat", "ivf", "ivfpq", "hnsw")
    assert tuple(options["dtype"].type.choices) == EMBEDDING_DTYPES == ("float32", "float16")
    assert (spec["nprobe"], spec["ef_search"], spec["hnsw_m"]) == (16, 64, 32)  # what the saved files assume


def test_embedding_precision_policy():
    from geokit.embedding import embedding_dtype

    assert embedding_dtype() == np.float32 and embedding_dtype("float16") == np.float16
    with pytest.raises(GeokitError, match="float32 or float16, not 'bfloat16'"):
        embedding_dtype("bfloat16")
    assert IndexSpec(dtype="float16").vector_dtype() == np.float16
    assert IndexSpec("hnsw", dtype="float16").vector_dtype() == np.float32  # faiss takes float32 only
    x = clustered(5, 8)
    ix, _ = make(IndexSpec(dtype="float16"), x)
    assert ix.vectors.dtype == np.float16 and np.abs(ix.vectors - x).max() < 1e-3
