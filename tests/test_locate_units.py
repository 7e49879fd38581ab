"""Consensus location, output formats and the lazy ``geokit.Localizer`` export (no model needed)."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest

import geokit
from geokit.locate import Candidate, Location, consensus, format_results, haversine_m


def cand(rank, lat, lon, score):
    return Candidate(rank, rank - 1, f"t{rank}.png", lat, lon, score)


def test_haversine_known_distance():
    # one degree of latitude is about 111.2 km
    assert haversine_m(48.0, 11.0, 49.0, 11.0) == pytest.approx(111_195, rel=1e-3)


def test_consensus_picks_the_largest_agreeing_group():
    cands = [cand(1, 48.0, 11.0, 0.9), cand(2, 40.0, 2.0, 0.85), cand(3, 48.0003, 11.0003, 0.8),
             cand(4, 47.9998, 11.0, 0.7), cand(5, 40.0001, 2.0, 0.6)]
    c = consensus(cands, radius_m=100)
    assert c is not None and c.support == 3 and sorted(c.members) == [1, 3, 4]
    assert c.lat == pytest.approx(48.0, abs=5e-4) and c.lon == pytest.approx(11.0, abs=5e-4)
    assert 0 < c.spread_m < 100


def test_no_consensus_when_nothing_agrees_or_no_locations():
    assert consensus([cand(1, 48, 11, 0.9), cand(2, 49, 11, 0.8)], radius_m=100) is None
    assert consensus([cand(1, None, None, 0.9), cand(2, None, None, 0.8)], radius_m=100) is None


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


def test_localizer_api_is_importable_without_torch():
    code = ("import sys, geokit.locate as m; assert hasattr(m, 'Localizer'); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.skipif("Localizer" not in getattr(geokit, "__all__", ()),
                    reason="geokit/__init__.py does not export Localizer yet")
def test_geokit_localizer_lazy_export():
    code = "import sys, geokit; L = geokit.Localizer; print(L.__module__, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["geokit.locate", "False"]
