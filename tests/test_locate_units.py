"""Consensus location, output formats and the lazy ``geokit.Localizer`` export (no model needed)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest

import geokit
from geokit.retrieval.locate import Candidate, Location, consensus, contact_sheet, format_results, haversine_m


def cand(rank, lat, lon, score):
    return Candidate(rank, rank - 1, f"t{rank}.png", lat, lon, score)


def test_haversine_known_distance():
    # one degree of latitude is about 111.2 km
    assert haversine_m(48.0, 11.0, 49.0, 11.0) == pytest.approx(111_195, rel=1e-3)


def test_consensus_is_the_top1_confirmed_by_candidates_near_it():
    cands = [
        cand(1, 48.0, 11.0, 0.9),
        cand(2, 48.0003, 11.0003, 0.85),
        cand(3, 47.9998, 11.0, 0.8),
        cand(4, 40.0, 2.0, 0.7),
        cand(5, 40.0001, 2.0, 0.6),
    ]
    c = consensus(cands, radius_m=100)
    assert c is not None and c.support == 3 and c.members == [1, 2, 3]
    assert (c.lat, c.lon) == (48.0, 11.0)  # the top-1's location exactly: never worse than the top-1
    assert c.spread_m == pytest.approx(haversine_m(48.0, 11.0, 48.0003, 11.0003))


def test_a_larger_group_elsewhere_does_not_move_the_consensus_away_from_the_top1():
    # issue 16: a cluster of lower-ranked look-alikes (ranks 2-4) far from the top-1 used to win
    cands = [
        cand(1, 48.0, 11.0, 0.9),
        cand(2, 40.0, 2.0, 0.85),
        cand(3, 40.0003, 2.0, 0.8),
        cand(4, 40.0, 2.0003, 0.7),
        cand(5, 48.0002, 11.0, 0.6),
    ]
    c = consensus(cands, radius_m=100)
    assert c is not None and (c.lat, c.lon) == (48.0, 11.0) and c.members == [1, 5]
    lonely = [cand(1, 48.0, 11.0, 0.9), *cands[1:4]]
    assert consensus(lonely, radius_m=100) is None  # the others agree, but not with the top-1
    assert consensus(cands, radius_m=100, min_support=3) is None


def test_no_consensus_when_nothing_agrees_or_no_locations():
    assert consensus([cand(1, 48, 11, 0.9), cand(2, 49, 11, 0.8)], radius_m=100) is None
    assert consensus([cand(1, None, None, 0.9), cand(2, None, None, 0.8)], radius_m=100) is None
    assert consensus([cand(1, None, None, 0.9), cand(2, 48, 11, 0.8), cand(3, 48, 11, 0.7)], radius_m=100) is None
    assert consensus([], radius_m=100) is None


def test_consensus_across_the_antimeridian():
    c = consensus([cand(1, 0.0, 179.9999, 0.9), cand(2, 0.0, -179.9999, 0.9)], radius_m=100)
    assert c is not None and abs(c.lon) == pytest.approx(180, abs=1e-3)


def test_formats():
    cands = [cand(1, 48.0, 11.0, 0.9), cand(2, 48.0001, 11.0, 0.8)]
    res = [Location("p.jpg", cands, consensus(cands, 100)), Location("q.jpg", [cand(1, None, None, 0.5)], None)]
    table = format_results(res, "table")
    assert "p.jpg" in table and "consensus: 48.0000" in table and "consensus: none" in table
    data = json.loads(format_results(res, "json"))
    assert data[0]["consensus"]["support"] == 2 and data[1]["candidates"][0]["lat"] is None
    rows = list(csv.DictReader(io.StringIO(format_results(res, "csv"))))
    assert len(rows) == 3 and rows[0]["consensus_support"] == "2" and rows[2]["lat"] == ""
    with pytest.raises(geokit.GeokitError):
        format_results(res, "xml")


def test_contact_sheet_labels_rows_with_file_names_scores_and_consensus(tmp_path):
    from PIL import Image

    for name, colour in (("a.png", "red"), ("b.png", "blue"), ("t1.png", "green"), ("t2.png", "gray")):
        Image.new("RGB", (64, 32 if name < "t" else 64), colour).save(tmp_path / name)
    cands = [
        Candidate(1, 0, str(tmp_path / "t1.png"), 48.0, 11.0, 0.84),
        Candidate(2, 1, str(tmp_path / "t2.png"), 48.0001, 11.0, 0.8),
    ]
    c = consensus(cands, 100)

    def label_area(photo: str, cons) -> Image.Image:
        out = tmp_path / "s.png"
        contact_sheet([Location(str(tmp_path / photo), cands, cons)], out, thumb=96)
        with Image.open(out) as im:
            assert im.size[0] == 8 + 3 * (96 + 8)
            return im.crop((8, im.size[1] - 60, 8 + 96, im.size[1] - 8)).convert("L")

    def ink(im: Image.Image) -> int:
        return int((np.asarray(im) < 128).sum())

    a, b = label_area("a.png", c), label_area("b.png", c)
    assert not np.array_equal(np.asarray(a), np.asarray(b))  # the photo's own file name, not "photo"
    assert ink(label_area("a.png", c)) > ink(label_area("a.png", None))  # consensus lat/lon printed


def test_localizer_api_is_importable_without_torch():
    code = "import sys, geokit.retrieval.locate as m; assert hasattr(m, 'Localizer'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_geokit_localizer_lazy_export():
    assert "Localizer" in geokit.__all__
    code = "import sys, geokit; L = geokit.Localizer; print(L.__module__, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["geokit.retrieval.locate", "False"]
