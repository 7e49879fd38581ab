"""Report pictures for any evaluation: a retrieval sheet, a training curve, a map of errors.

Generic over :class:`~geokit.data.EvalSet` (the map needs its GPS) and drawn with Pillow only.
``geokit demo`` uses them; any run can::

    res = run_protocol(parts, "test")
    retrieval_sheet(parts.dataset, res.eval_set, res.query, res.reference, "sheet.png")
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geokit.data import CrossViewDataset, EvalSet

GREEN, RED, GREY, INK = (40, 170, 70), (215, 50, 40), (150, 150, 150), (30, 30, 30)
EARTH_RADIUS_M = 6_371_008.8


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def haversine_m(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Great-circle distance in metres between ``(lat, lon)`` rows in degrees."""
    a, b = np.radians(np.asarray(a, np.float64)), np.radians(np.asarray(b, np.float64))
    h = (np.sin((b[..., 0] - a[..., 0]) / 2) ** 2
         + np.cos(a[..., 0]) * np.cos(b[..., 0]) * np.sin((b[..., 1] - a[..., 1]) / 2) ** 2)
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(h, 0, 1)))


def top_k(query: np.ndarray, reference: np.ndarray, k: int) -> np.ndarray:
    """``(Q, k)`` indices of the best references (the shared retrieval path)."""
    from geokit.retrieval import search

    return search(query, reference, k)[1]


def localisation_errors(eval_set: EvalSet, top1: np.ndarray) -> np.ndarray | None:
    """Metres between each query and its top-1 reference, or None without GPS."""
    if eval_set.query_gps is None or eval_set.reference_gps is None:
        return None
    return haversine_m(eval_set.query_gps, eval_set.reference_gps[top1])


# ------------------------------------------------------------------------------ retrieval sheet


def retrieval_sheet(dataset: CrossViewDataset, eval_set: EvalSet, query: np.ndarray, reference: np.ndarray,
                    path: str | Path, *, rows: int = 6, k: int = 5, cell: int = 96,
                    indices: Sequence[int] | None = None) -> Path:
    """A PNG: ``rows`` queries (evenly spread over the set), each with its top-``k`` references,
    true matches outlined in green, others in red, with the rank and the distance when GPS is known."""
    from PIL import Image, ImageDraw

    path = Path(path)
    top = top_k(query, reference, k)
    if indices is None:
        indices = np.linspace(0, len(eval_set.query_paths) - 1, min(rows, len(eval_set.query_paths))).astype(int)
    qh, qw = dataset.query_size
    qcell_w = max(1, round(cell * qw / qh))
    pad, head, label = 8, 30, 18
    width = pad + qcell_w + pad + k * (cell + pad)
    height = head + len(indices) * (cell + label + pad) + pad
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    font, small = _font(14), _font(11)
    draw.text((pad, 8), f"{dataset.query_view} query  ->  top-{k} {dataset.reference_view} "
              f"({eval_set.name}, green = true match)", fill=INK, font=font)
    for row, qi in enumerate(indices):
        y = head + row * (cell + label + pad)
        q = Image.fromarray(dataset.load_image(eval_set.query_paths[qi], dataset.query_size))
        sheet.paste(q.resize((qcell_w, cell), Image.BILINEAR), (pad, y))
        draw.text((pad, y + cell + 2), f"query {qi}", fill=INK, font=small)
        for j, ri in enumerate(top[qi]):
            x = pad + qcell_w + pad + j * (cell + pad)
            r = Image.fromarray(dataset.load_image(eval_set.reference_paths[ri], dataset.reference_size))
            sheet.paste(r.resize((cell, cell), Image.BILINEAR), (x, y))
            hit = eval_set.reference_labels[ri] == eval_set.query_labels[qi]
            draw.rectangle((x - 2, y - 2, x + cell + 1, y + cell + 1), outline=GREEN if hit else RED,
                           width=4 if hit else 1)
            text = f"#{j + 1}"
            if eval_set.query_gps is not None and eval_set.reference_gps is not None:
                text += f"  {haversine_m(eval_set.query_gps[qi], eval_set.reference_gps[ri]):.0f} m"
            draw.text((x, y + cell + 2), text, fill=GREEN if hit else INK, font=small)
    sheet.save(path)
    return path


# ------------------------------------------------------------------------------ training curve


def _panel(draw: Any, box: tuple[int, int, int, int], xs: Sequence[float], ys: Sequence[float],
           title: str, colour: tuple[int, int, int], *, y_range: tuple[float, float] | None = None) -> None:
    """A minimal line plot with axes, ticks and a title inside ``box``."""
    font = _font(12)
    x0, y0, x1, y1 = box
    left, bottom = x0 + 48, y1 - 28
    draw.text((x0 + 48, y0), title, fill=INK, font=_font(14))
    top = y0 + 24
    draw.line((left, top, left, bottom, x1, bottom), fill=INK, width=1)
    if not xs:
        draw.text((left + 10, (top + bottom) // 2), "no data", fill=GREY, font=font)
        return
    lo, hi = y_range if y_range else (min(ys), max(ys))
    if hi - lo < 1e-9:
        lo, hi = lo - 1, hi + 1
    xmin, xmax = min(xs), max(xs)
    xspan = max(xmax - xmin, 1e-9)

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - xmin) / xspan * (x1 - left - 8) if xmax > xmin else (left + x1) / 2,
                bottom - (y - lo) / (hi - lo) * (bottom - top))

    for i in range(5):
        v = lo + (hi - lo) * i / 4
        _, yy = px(xmin, v)
        draw.line((left - 4, yy, left, yy), fill=INK)
        draw.text((x0, yy - 7), f"{v:.3g}", fill=INK, font=font)
    ticks = sorted(set(int(round(x)) for x in np.linspace(xmin, xmax, min(len(xs), 8))))
    for t in ticks:
        xx, _ = px(t, lo)
        draw.line((xx, bottom, xx, bottom + 4), fill=INK)
        draw.text((xx - 4, bottom + 6), str(t), fill=INK, font=font)
    pts = [px(x, y) for x, y in zip(xs, ys)]
    if len(pts) > 1:
        draw.line(pts, fill=colour, width=2)
    for x, y in pts:
        draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
    draw.text((x1 - 40, top - 14), "epoch ->", fill=GREY, font=font)


def training_curve(history: Sequence[Mapping[str, Any]], path: str | Path, *,
                   metric: str = "eval/R@1", label: str | None = None) -> Path:
    """A PNG with the mean training loss per epoch and, when the run evaluated during training
    (``train.eval_every``), ``metric`` per epoch (the eval split's R@1, in percent)."""
    from PIL import Image, ImageDraw

    path = Path(path)
    img = Image.new("RGB", (900, 340), "white")
    draw = ImageDraw.Draw(img)
    ep = [float(r["epoch"]) for r in history if "loss" in r]
    loss = [float(r["loss"]) for r in history if "loss" in r]
    _panel(draw, (10, 10, 440, 330), ep, loss, "training loss", (40, 90, 200))
    ev = [(float(r["epoch"]), float(r[metric])) for r in history if metric in r]
    hi = max([v for _, v in ev] + [1.0])
    _panel(draw, (460, 10, 890, 330), [e for e, _ in ev], [v for _, v in ev],
           label or f"{metric} (%)", (200, 80, 40), y_range=(0.0, min(100.0, hi * 1.1)))
    img.save(path)
    return path


# ------------------------------------------------------------------------------ map


def location_map(eval_set: EvalSet, top1: np.ndarray, path: str | Path, *, size: int = 760,
                 background: Any = None, bounds: Mapping[str, float] | None = None,
                 title: str | None = None) -> Path:
    """A PNG map of the evaluation area: every reference (grey dot), every query's true location
    (green when its top-1 is a true match) and a red line to the retrieved location otherwise.

    :param background: optional PIL image of a larger area, north up, covering ``bounds``
        (``north``/``south``/``west``/``east`` in degrees); the evaluation area is cut out of it.
    """
    from PIL import Image, ImageDraw

    if eval_set.query_gps is None or eval_set.reference_gps is None:
        raise ValueError(f"{eval_set.name}: the map needs query and reference GPS")
    path = Path(path)
    qg, rg = np.asarray(eval_set.query_gps, float), np.asarray(eval_set.reference_gps, float)
    pts = np.concatenate([qg, rg])
    lat0 = float(pts[:, 0].mean())
    kx = math.cos(math.radians(lat0))  # metres per degree east relative to north
    south, north = pts[:, 0].min(), pts[:, 0].max()
    west, east = pts[:, 1].min(), pts[:, 1].max()
    span = max(north - south, (east - west) * kx, 1e-6) * 1.08
    clat, clon = (north + south) / 2, (east + west) / 2
    n_, s_ = clat + span / 2, clat - span / 2
    w_, e_ = clon - span / 2 / kx, clon + span / 2 / kx
    header = 44

    def px(lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (lon - w_) / (e_ - w_) * size, header + (n_ - lat) / (n_ - s_) * size

    img = Image.new("RGB", (size, size + header), "white")
    if background is not None and bounds is not None:
        bw, bh = background.size
        fx = lambda lon: (lon - bounds["west"]) / (bounds["east"] - bounds["west"]) * bw  # noqa: E731
        fy = lambda lat: (bounds["north"] - lat) / (bounds["north"] - bounds["south"]) * bh  # noqa: E731
        crop = background.convert("RGB").crop((fx(w_), fy(n_), fx(e_), fy(s_))).resize((size, size))
        img.paste(Image.blend(crop, Image.new("RGB", crop.size, "white"), 0.45), (0, header))
    draw = ImageDraw.Draw(img)
    top1 = np.asarray(top1)
    hit = eval_set.reference_labels[top1] == eval_set.query_labels
    err = haversine_m(qg, rg[top1])
    rx, ry = px(rg[:, 0], rg[:, 1])
    for x, y in zip(rx, ry):
        draw.ellipse((x - 1.5, y - 1.5, x + 1.5, y + 1.5), fill=GREY)
    qx, qy = px(qg[:, 0], qg[:, 1])
    tx, ty = px(rg[top1, 0], rg[top1, 1])
    for i in np.flatnonzero(~hit):
        draw.line((qx[i], qy[i], tx[i], ty[i]), fill=RED, width=1)
        draw.ellipse((tx[i] - 2, ty[i] - 2, tx[i] + 2, ty[i] + 2), outline=RED)
    for i in range(len(qg)):
        c = GREEN if hit[i] else RED
        draw.ellipse((qx[i] - 3, qy[i] - 3, qx[i] + 3, qy[i] + 3), fill=c)
    # scale bar: a round number of metres near a fifth of the width
    metres_per_px = span * 111_195.0 / size
    target = metres_per_px * size / 5
    bar_m = 10 ** math.floor(math.log10(target))
    bar_m = max(m for m in (bar_m, 2 * bar_m, 5 * bar_m) if m <= target)
    bar = bar_m / metres_per_px
    draw.rectangle((10, size + header - 22, 10 + bar, size + header - 16), fill=INK)
    draw.text((14 + bar, size + header - 28), f"{bar_m:.0f} m", fill=INK, font=_font(12))
    font = _font(14)
    draw.text((10, 4), title or f"{eval_set.name}: true location (dot) -> retrieved location (red line)",
              fill=INK, font=font)
    draw.text((10, 22), f"top-1 correct {100 * hit.mean():.1f}%   median error {np.median(err):.0f} m   "
              f"within 25 m {100 * (err <= 25).mean():.1f}%   within 100 m {100 * (err <= 100).mean():.1f}%",
              fill=INK, font=_font(12))
    img.save(path)
    return path
