"""Localise your own photos against an index of geo-tagged tiles (``geokit locate``).

Python API (load once, call many times)::

    from geokit import Localizer
    loc = Localizer("tiles.index")                 # the checkpoint recorded in the index
    loc = Localizer("tiles.index", "model.safetensors", view="query", device="cpu")
    for result in loc.locate(["photo1.jpg", "photo2.jpg"], k=5):
        print(result.photo, result.best.lat, result.best.lon, result.best.score)
        if result.consensus:
            print("agreed:", result.consensus.lat, result.consensus.lon, result.consensus.support)

A photo is embedded as the ``query`` view (a street-level panorama, or a drone image for a
University-1652 model) or as the ``reference`` view, resized to the size recorded in the
checkpoint. The consensus location is the score-weighted centre of the largest group of
top-k candidates that lie within ``consensus_radius_m`` of one of them, reported when the group
has at least two members.
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geokit.errors import GeokitError

EARTH_RADIUS_M = 6_371_008.8


@dataclass
class Candidate:
    """One retrieved reference tile."""

    rank: int  # 1 = best
    index: int  # row in the index
    path: str
    lat: float | None
    lon: float | None
    score: float  # cosine similarity


@dataclass
class Consensus:
    """Where several top-k candidates agree."""

    lat: float
    lon: float
    support: int  # candidates in the group
    spread_m: float  # the farthest member's distance from the centre
    members: list[int]  # ranks of the members


@dataclass
class Location:
    """The result for one photo."""

    photo: str
    candidates: list[Candidate]
    consensus: Consensus | None

    @property
    def best(self) -> Candidate:
        return self.candidates[0]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def haversine_m(lat1: Any, lon1: Any, lat2: Any, lon2: Any) -> Any:
    """Great-circle distance in metres between points in degrees (numpy broadcasting)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0, 1)))


def consensus(candidates: Sequence[Candidate], radius_m: float) -> Consensus | None:
    """The largest group of candidates within ``radius_m`` of one candidate (ties: the group
    with the higher score sum), centred at the score-weighted mean on the sphere."""
    geo = [c for c in candidates if c.lat is not None and c.lon is not None]
    if len(geo) < 2:
        return None
    lat = np.array([c.lat for c in geo])
    lon = np.array([c.lon for c in geo])
    score = np.array([c.score for c in geo])
    d = haversine_m(lat[:, None], lon[:, None], lat[None, :], lon[None, :])
    near = d <= radius_m
    size = near.sum(1)
    weight = (near * score[None, :]).sum(1)
    best = max(range(len(geo)), key=lambda i: (size[i], weight[i], -i))
    if size[best] < 2:
        return None
    members = np.flatnonzero(near[best])
    w = np.clip(score[members], 0, None) + 1e-6
    la, lo = np.radians(lat[members]), np.radians(lon[members])
    xyz = np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], 1)
    c = (w[:, None] * xyz).sum(0)
    c_lat = math.degrees(math.atan2(c[2], math.hypot(c[0], c[1])))
    c_lon = math.degrees(math.atan2(c[1], c[0]))
    spread = float(haversine_m(c_lat, c_lon, lat[members], lon[members]).max())
    return Consensus(c_lat, c_lon, int(len(members)), spread, [geo[i].rank for i in members])


class Localizer:
    """Load an index and its encoder once; :meth:`locate` photos as often as you like.

    :param index: an index file written by ``geokit index build``.
    :param checkpoint: the weights to embed photos with (default: the checkpoint recorded in the
        index). A checkpoint whose encoder record or weights differ from the index's is refused.
    :param view: ``query`` (street-level panorama or drone image) or ``reference`` (a tile).
    :param device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
    :param consensus_radius_m: candidates closer than this agree with each other.
    """

    def __init__(self, index: str | Path, checkpoint: str | Path | None = None, *, view: str = "query",
                 device: str = "auto", batch_size: int = 16, consensus_radius_m: float = 100.0):
        from geokit.index import GeoIndex, load_encoder
        from geokit.runtime import select_device

        self.index = GeoIndex.load(index)
        if checkpoint is None:
            checkpoint = self.index.meta.get("checkpoint")
            if not checkpoint or not Path(checkpoint).is_file():
                raise GeokitError(f"index {index} was built with checkpoint {checkpoint}, which is not "
                                  "there any more; pass the checkpoint (--checkpoint)")
        self.device = select_device(device)
        self.encoder = load_encoder(checkpoint, self.device)
        self.index.check_encoder(self.encoder.record, self.encoder.fingerprint, str(checkpoint))
        self.size = self.encoder.size(view)
        self.view = view
        self.batch_size = batch_size
        self.consensus_radius_m = float(consensus_radius_m)

    def embed(self, photos: Sequence[str | Path]) -> np.ndarray:
        """``(N, D)`` unit embeddings of the photos, in the chosen view."""
        from geokit.data import CrossViewDataset
        from geokit.embedding import embed_paths

        return embed_paths(self.encoder.module, CrossViewDataset(), [str(p) for p in photos], self.size,
                           self.encoder.norm_for(self.view), batch_size=self.batch_size, device=self.device,
                           show=False, view=self.view)

    def locate(self, photos: str | Path | Sequence[str | Path], k: int = 5) -> list[Location]:
        """Top-``k`` tiles per photo, best first, with a consensus location where they agree."""
        if isinstance(photos, (str, Path)):
            photos = [photos]
        photos = [str(p) for p in photos]
        if not photos:
            return []
        scores, ids = self.index.search(self.embed(photos), k)
        out = []
        for photo, srow, irow in zip(photos, scores, ids):
            cands = []
            for s, i in zip(srow, irow):
                if i < 0:
                    continue
                lat, lon = (float(x) for x in self.index.latlon[i])
                known = math.isfinite(lat) and math.isfinite(lon)
                cands.append(Candidate(len(cands) + 1, int(i), self.index.paths[i], lat if known else None,
                                       lon if known else None, float(s)))
            out.append(Location(photo, cands, consensus(cands, self.consensus_radius_m)))
        return out

    __call__ = locate


# ------------------------------------------------------------------------------ output


def format_results(results: Sequence[Location], fmt: str = "table") -> str:
    """``table`` (aligned text), ``json`` (a list of objects) or ``csv`` (one row per candidate)."""
    if fmt == "json":
        return json.dumps([r.to_dict() for r in results], indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["photo", "rank", "path", "lat", "lon", "score", "consensus_lat", "consensus_lon",
                    "consensus_support"])
        for r in results:
            c = r.consensus
            for cand in r.candidates:
                w.writerow([r.photo, cand.rank, cand.path, _num(cand.lat), _num(cand.lon), f"{cand.score:.6f}",
                            _num(c.lat if c else None), _num(c.lon if c else None), c.support if c else ""])
        return buf.getvalue()
    if fmt != "table":
        raise GeokitError(f"unknown format {fmt!r}: table, json or csv")
    lines = []
    for r in results:
        lines.append(r.photo)
        for cand in r.candidates:
            where = f"{cand.lat:10.6f} {cand.lon:11.6f}" if cand.lat is not None else f"{'-':>10} {'-':>11}"
            lines.append(f"  {cand.rank:>3}  {cand.score:7.4f}  {where}  {cand.path}")
        c = r.consensus
        if c:
            lines.append(f"  consensus: {c.lat:.6f} {c.lon:.6f} ({c.support} of {len(r.candidates)} "
                         f"candidates within {c.spread_m:.0f} m)")
        else:
            lines.append("  consensus: none (the candidates do not agree)")
    return "\n".join(lines)


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.6f}"


def contact_sheet(results: Sequence[Location], path: str | Path, *, thumb: int = 128) -> None:
    """A PNG: one row per photo, the photo then its top-k tiles with rank and score."""
    from PIL import Image, ImageDraw

    from geokit.checkpoint import atomic_write

    if not results:
        raise GeokitError("nothing to draw: no photos were located")
    cols = 1 + max(len(r.candidates) for r in results)
    label = 14
    sheet = Image.new("RGB", (cols * (thumb + 4) + 4, len(results) * (thumb + label + 6) + 4), "white")
    draw = ImageDraw.Draw(sheet)
    for row, r in enumerate(results):
        y = 4 + row * (thumb + label + 6)
        items = [(r.photo, "photo")] + [(c.path, f"#{c.rank} {c.score:.3f}") for c in r.candidates]
        for col, (img_path, text) in enumerate(items):
            x = 4 + col * (thumb + 4)
            try:
                with Image.open(img_path) as im:
                    im = im.convert("RGB")
                    im.thumbnail((thumb, thumb))
                    sheet.paste(im, (x + (thumb - im.width) // 2, y + (thumb - im.height) // 2))
            except OSError:
                draw.rectangle([x, y, x + thumb, y + thumb], outline="red")
            draw.text((x, y + thumb + 2), text, fill="black")
    atomic_write(path, lambda p: sheet.save(p, format="PNG"))
