"""Localise your own photos against an index of geo-tagged tiles (``geokit locate``).

Python API (load once, call many times)::

    from geokit import Localizer
    loc = Localizer("tiles.index")                 # the checkpoint recorded in the index
    loc = Localizer("tiles.index", "model.safetensors", view="query", device="cpu")
    for result in loc.locate(["photo1.jpg", "photo2.jpg"], k=5):
        print(result.photo, result.best.lat, result.best.lon, result.best.score)
        if result.consensus:                       # other top-k tiles lie near the top-1
            print("confirmed by", result.consensus.support, "tiles:", result.consensus.lat, result.consensus.lon)

A photo is embedded as the ``query`` view (a street-level panorama, or a drone image for a
University-1652 model) or as the ``reference`` view, resized to the size recorded in the
checkpoint.

The consensus says whether the top-k agree with the top-1 tile: it is reported when at least one
other candidate lies within ``consensus_radius_m`` of the top-1 tile, and its location IS the
top-1 tile's, so it is never less accurate than the top-1. ``support`` counts the candidates in
that circle (the top-1 included): a confidence, not a different answer. (An earlier version
averaged the largest group of candidates wherever it was; on the synthetic world that was far
worse than the top-1 — BENCHMARKS.md, "locate: consensus vs top-1".)
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

from geokit.embedding import embedding_dtype
from geokit.errors import GeokitError
from geokit.geo import haversine_m

__all__ = [
    "Candidate",
    "Consensus",
    "Localizer",
    "Location",
    "consensus",
    "contact_sheet",
    "format_results",
]


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
    """The top-1 tile, confirmed by other top-k candidates near it."""

    lat: float  # the top-1 tile's location
    lon: float
    support: int  # candidates within the radius of the top-1, the top-1 included (>= 2)
    spread_m: float  # the farthest supporting candidate's distance from the top-1
    members: list[int]  # ranks of the supporting candidates (1 first)


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


def consensus(candidates: Sequence[Candidate], radius_m: float, *, min_support: int = 2) -> Consensus | None:
    """The top-1 candidate's location when at least ``min_support`` candidates (the top-1
    included) lie within ``radius_m`` of it; None otherwise, or when the top-1 has no lat/lon.

    Anchored on the top-1 by design: a centre of the largest agreeing group can sit on a cluster
    of lower-ranked look-alikes far from the true place, so it was often worse than the top-1.
    """
    if not candidates:
        return None
    top = min(candidates, key=lambda c: c.rank)
    if top.lat is None or top.lon is None:
        return None
    geo = [c for c in candidates if c.lat is not None and c.lon is not None]
    lat = np.array([c.lat for c in geo], dtype=np.float64)
    lon = np.array([c.lon for c in geo], dtype=np.float64)
    d = np.atleast_1d(haversine_m(top.lat, top.lon, lat, lon))
    near = np.flatnonzero(d <= radius_m)
    if len(near) < max(min_support, 2):
        return None
    order = sorted(near, key=lambda i: geo[i].rank)
    return Consensus(float(top.lat), float(top.lon), int(len(near)), float(d[near].max()), [geo[i].rank for i in order])


class Localizer:
    """Load an index and its encoder once; :meth:`locate` photos as often as you like.

    :param index: an index file written by ``geokit index build``.
    :param checkpoint: the weights to embed photos with (default: the checkpoint recorded in the
        index). A checkpoint whose encoder record or weights differ from the index's is refused.
    :param view: ``query`` (street-level panorama or drone image) or ``reference`` (a tile).
    :param device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
    :param consensus_radius_m: candidates closer than this to the top-1 tile support it.
    """

    def __init__(
        self,
        index: str | Path,
        checkpoint: str | Path | None = None,
        *,
        view: str = "query",
        device: str = "auto",
        batch_size: int = 16,
        consensus_radius_m: float = 100.0,
        tiles_root: str | Path | None = None,
        allow_outside: bool = False,
    ):
        from geokit.checkpoint import load_encoder
        from geokit.retrieval import GeoIndex
        from geokit.runtime import select_device

        if view not in ("query", "reference"):
            raise GeokitError(f"view must be 'query' or 'reference', not {str(view)[:40]!r}")
        if not (batch_size >= 1 and math.isfinite(consensus_radius_m) and consensus_radius_m >= 0):
            raise GeokitError(
                f"batch_size must be ≥ 1 and the consensus radius a finite number ≥ 0 "
                f"(got {batch_size}, {consensus_radius_m})"
            )
        # tile paths checked against the gallery folder (see GeoIndex.load)
        self.index = GeoIndex.load(index, tiles_root=tiles_root, allow_outside=allow_outside)
        if checkpoint is None:
            checkpoint = self.index.meta.get("checkpoint")
            if not checkpoint or not Path(checkpoint).is_file():
                raise GeokitError(
                    f"index {index} was built with checkpoint {checkpoint}, which is not "
                    "there any more; pass the checkpoint (--checkpoint)"
                )
        self.device = select_device(device)
        self.encoder = load_encoder(checkpoint, self.device)
        self.index.check_encoder(self.encoder.record, self.encoder.fingerprint, str(checkpoint))
        self.size = self.encoder.size(view)
        self.view = view
        self.batch_size = batch_size
        self.consensus_radius_m = float(consensus_radius_m)
        from geokit.engine.evaluation import build_rerankers

        # The run's re-rankers (recorded by index build) need the gallery's vectors; their
        # reference side (e.g. database-side augmentation) is applied once, here.
        self.rerankers = build_rerankers(self.index.meta.get("rerankers"))
        self._gallery = None
        if self.rerankers:
            from geokit.engine.evaluation import apply_rerankers

            own = self.index.gallery()
            _, self._gallery = apply_rerankers(self.rerankers, np.zeros((0, own.shape[1]), embedding_dtype()), own)
            self._gallery_changed = self._gallery is not own

    def embed(self, photos: Sequence[str | Path]) -> np.ndarray:
        """``(N, D)`` unit embeddings of the photos, in the chosen view."""
        from geokit.data import CrossViewDataset
        from geokit.embedding import embed_paths

        return embed_paths(
            self.encoder.module,
            CrossViewDataset(),
            [str(p) for p in photos],
            self.size,
            self.encoder.norm_for(self.view),
            batch_size=self.batch_size,
            device=self.device,
            show=False,
            view=self.view,
        )

    def locate(self, photos: str | Path | Sequence[str | Path], k: int = 5) -> list[Location]:
        """Top-``k`` tiles per photo, best first, with a consensus where others lie near the top-1."""
        names = [str(p) for p in ([photos] if isinstance(photos, (str, Path)) else photos)]
        if not names:
            return []
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise GeokitError(f"k (--top-k) must be a whole number ≥ 1, not {str(k)[:40]}")
        k = int(min(k, len(self.index)))  # more than the index holds would only allocate
        emb = self.embed(names)
        if not np.isfinite(emb).all():  # never a NaN score with exit status 0
            bad = names[int(np.flatnonzero(~np.isfinite(emb).all(1))[0])]
            raise GeokitError(
                f"the embedding of {bad} is not finite: the checkpoint's weights or normalisation are damaged"
            )
        if self.rerankers and self._gallery is not None:  # the gallery is set with the re-rankers
            from geokit.engine.evaluation import apply_rerankers
            from geokit.retrieval import search

            emb, _ = apply_rerankers(self.rerankers, emb, self._gallery)
            scores, ids = search(emb, self._gallery, k) if self._gallery_changed else self.index.search(emb, k)
        else:
            scores, ids = self.index.search(emb, k)
        out = []
        for photo, srow, irow in zip(names, scores, ids):
            cands: list[Candidate] = []
            for s, i in zip(srow, irow):
                if i < 0:
                    continue
                lat, lon = (float(x) for x in self.index.latlon[i])
                known = math.isfinite(lat) and math.isfinite(lon)
                cands.append(
                    Candidate(
                        len(cands) + 1,
                        int(i),
                        self.index.paths[i],
                        lat if known else None,
                        lon if known else None,
                        float(s),
                    )
                )
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
        w.writerow(
            ["photo", "rank", "path", "lat", "lon", "score", "consensus_lat", "consensus_lon", "consensus_support"]
        )
        for r in results:
            c = r.consensus
            for cand in r.candidates:
                w.writerow(
                    [
                        r.photo,
                        cand.rank,
                        cand.path,
                        _num(cand.lat),
                        _num(cand.lon),
                        f"{cand.score:.6f}",
                        _num(c.lat if c else None),
                        _num(c.lon if c else None),
                        c.support if c else "",
                    ]
                )
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
            lines.append(
                f"  consensus: {c.lat:.6f} {c.lon:.6f}, the top-1 ({c.support} of {len(r.candidates)} "
                f"candidates within {c.spread_m:.0f} m of it)"
            )
        else:
            lines.append("  consensus: none (no other candidate near the top-1)")
    return "\n".join(lines)


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.6f}"


def _short(text: str, font: Any, width: int) -> str:
    """``text`` cut from the left with an ellipsis until it fits ``width`` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength("…" + text) > width:
        text = text[1:]
    return "…" + text


def _tail(path: str) -> str:
    """The file name with its folder (``ground/0001.png``): photo and tile names often repeat."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def contact_sheet(results: Sequence[Location], path: str | Path, *, thumb: int = 128) -> None:
    """A PNG readable without the table: one row per photo — the photo with its file name and
    consensus, then its top-k tiles, each labelled with rank and score, lat/lon and file name;
    the top-1 outlined thick, the candidates supporting the consensus in blue."""
    from PIL import Image, ImageDraw

    from geokit.checkpoint import atomic_write
    from geokit.cli.report import BLUE, GREY, INK, load_font

    if not results:
        raise GeokitError("nothing to draw: no photos were located")
    cols = 1 + max(len(r.candidates) for r in results)
    font, small = load_font(13), load_font(11)
    pad, head, label = 8, 40, 50  # label: three text lines under each picture
    cell_w = thumb + pad
    row_h = thumb + label + pad
    sheet = Image.new("RGB", (pad + cols * cell_w, head + len(results) * row_h + pad), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text(
        (pad, 6),
        "geokit locate: each photo, then its top-k tiles (rank, cosine score, lat/lon, file)",
        fill=INK,
        font=font,
    )
    draw.text(
        (pad, 22),
        "thick outline: top-1 tile;  blue: tiles within the consensus radius of the top-1 "
        "(the consensus is the top-1's location)",
        fill=GREY,
        font=small,
    )

    def picture(img_path: str, x: int, y: int) -> None:
        try:
            with Image.open(img_path) as im:
                im = im.convert("RGB")
                f = thumb / max(im.width, im.height)  # fit the cell, enlarging small tiles too
                im = im.resize((max(1, round(im.width * f)), max(1, round(im.height * f))), Image.Resampling.BILINEAR)
                sheet.paste(im, (x + (thumb - im.width) // 2, y + (thumb - im.height) // 2))
        except OSError:
            draw.rectangle([x, y, x + thumb, y + thumb], outline=(215, 50, 40))
            draw.text((x + 6, y + thumb // 2 - 6), "cannot open", fill=(215, 50, 40), font=small)

    for row, r in enumerate(results):
        y = head + row * row_h
        x = pad
        picture(r.photo, x, y)
        c = r.consensus
        texts = [
            _tail(r.photo),
            f"consensus: {c.support} of {len(r.candidates)}" if c else "no consensus",
            f"{c.lat:.5f}, {c.lon:.5f}" if c else "(no tile near the top-1)",
        ]
        for i, t in enumerate(texts):
            draw.text(
                (x, y + thumb + 3 + 15 * i),
                _short(t, font if i == 0 else small, thumb),
                fill=INK if c or i < 2 else GREY,
                font=font if i == 0 else small,
            )
        members = set(c.members) if c else set()
        for col, cand in enumerate(r.candidates, start=1):
            x = pad + col * cell_w
            picture(cand.path, x, y)
            if cand.rank in members or cand.rank == 1:
                draw.rectangle(
                    [x - 2, y - 2, x + thumb + 1, y + thumb + 1],
                    outline=BLUE if cand.rank in members else INK,
                    width=3 if cand.rank == 1 else 2,
                )
            where = f"{cand.lat:.5f}, {cand.lon:.5f}" if cand.lat is not None else "no lat/lon"
            draw.text((x, y + thumb + 3), f"#{cand.rank}   {cand.score:.3f}", fill=INK, font=font)
            draw.text((x, y + thumb + 18), _short(where, small, thumb), fill=INK, font=small)
            draw.text((x, y + thumb + 33), _short(_tail(cand.path), small, thumb), fill=GREY, font=small)
    atomic_write(path, lambda p: sheet.save(p, format="PNG"))
