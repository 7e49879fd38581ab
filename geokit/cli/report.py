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
from geokit.geo import distance_m

GREEN, RED, GREY, INK = (40, 170, 70), (215, 50, 40), (150, 150, 150), (30, 30, 30)
BLUE, ORANGE, GRID = (40, 110, 210), (235, 140, 20), (225, 225, 225)


def load_font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def top_k(query: np.ndarray, reference: np.ndarray, k: int) -> np.ndarray:
    """``(Q, k)`` indices of the best references (the shared retrieval path)."""
    from geokit.retrieval import search

    return search(query, reference, k)[1]


def localisation_errors(eval_set: EvalSet, top1: np.ndarray) -> np.ndarray | None:
    """Metres between each query and its top-1 reference, or None without GPS."""
    if eval_set.query_gps is None or eval_set.reference_gps is None:
        return None
    return distance_m(eval_set.query_gps, eval_set.reference_gps[top1])


# ------------------------------------------------------------------------------ retrieval sheet


def retrieval_sheet(
    dataset: CrossViewDataset,
    eval_set: EvalSet,
    query: np.ndarray,
    reference: np.ndarray,
    path: str | Path,
    *,
    rows: int = 6,
    k: int = 5,
    cell: int = 96,
    indices: Sequence[int] | np.ndarray | None = None,
) -> Path:
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
    font, small = load_font(14), load_font(11)
    draw.text(
        (pad, 8),
        f"{dataset.query_view} query  ->  top-{k} {dataset.reference_view} "
        f"({eval_set.name}; green = true match"
        + (
            "; #rank, metres from the query's true location)"
            if eval_set.query_gps is not None and eval_set.reference_gps is not None
            else ")"
        ),
        fill=INK,
        font=font,
    )
    for row, qi in enumerate(indices):
        y = head + row * (cell + label + pad)
        q = Image.fromarray(dataset.load_image(eval_set.query_paths[qi], dataset.query_size))
        sheet.paste(q.resize((qcell_w, cell), Image.Resampling.BILINEAR), (pad, y))
        draw.text((pad, y + cell + 2), f"query {qi}: {Path(eval_set.query_paths[qi]).name}", fill=INK, font=small)
        for j, ri in enumerate(top[qi]):
            x = pad + qcell_w + pad + j * (cell + pad)
            r = Image.fromarray(dataset.load_image(eval_set.reference_paths[ri], dataset.reference_size))
            sheet.paste(r.resize((cell, cell), Image.Resampling.BILINEAR), (x, y))
            hit = eval_set.reference_labels[ri] == eval_set.query_labels[qi]
            draw.rectangle(
                (x - 2, y - 2, x + cell + 1, y + cell + 1), outline=GREEN if hit else RED, width=4 if hit else 1
            )
            text = f"#{j + 1}"
            if eval_set.query_gps is not None and eval_set.reference_gps is not None:
                text += f"  {distance_m(eval_set.query_gps[qi], eval_set.reference_gps[ri]):.0f} m"
            draw.text((x, y + cell + 2), text, fill=GREEN if hit else INK, font=small)
    sheet.save(path)
    return path


# ------------------------------------------------------------------------------ training curve


def nice_ticks(lo: float, hi: float, most: int = 6) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten) covering ``[lo, hi]``, at most
    ``most`` of them inside the range."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(most - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    out = []
    v = first
    while v <= hi + 1e-9 * step:
        out.append(round(v, 12))
        v += step
    return out


def _tick_label(v: float, ticks: Sequence[float]) -> str:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else abs(v) or 1.0
    digits = max(0, -math.floor(math.log10(step) + 1e-9)) if step < 1 else 0
    if step < 1 and abs(step * 10**digits - round(step * 10**digits)) > 1e-6:
        digits += 1  # 0.25 needs two decimals
    return f"{v:.{digits}f}"


def _panel(
    draw: Any,
    box: tuple[int, int, int, int],
    xs: Sequence[float],
    ys: Sequence[float],
    title: str,
    colour: tuple[int, int, int],
    *,
    y_range: tuple[float, float] | None = None,
    x_label: str = "epoch",
    y_label: str = "",
) -> None:
    """A line plot with round ticks, a light grid, axis labels and a title inside ``box``."""
    font = load_font(12)
    x0, y0, x1, y1 = box
    left, bottom, right = x0 + 56, y1 - 40, x1 - 12
    draw.text((left, y0), title, fill=INK, font=load_font(14))
    top = y0 + 26
    if not xs:
        draw.line((left, top, left, bottom, right, bottom), fill=INK, width=1)
        draw.text((left + 10, (top + bottom) // 2), "no data", fill=GREY, font=font)
        return
    lo, hi = y_range if y_range else (min(ys), max(ys))
    if hi - lo < 1e-9:
        lo, hi = lo - 1, hi + 1
    if not y_range:  # a margin, then round limits
        margin = 0.05 * (hi - lo)
        lo, hi = lo - margin, hi + margin
    yt = nice_ticks(lo, hi)
    if y_range is None and len(yt) > 1:
        step = yt[1] - yt[0]
        lo, hi = min(lo, yt[0]), max(hi, yt[-1])
        lo, hi = math.floor(lo / step) * step, math.ceil(hi / step) * step
        yt = nice_ticks(lo, hi)
    xmin, xmax = min(xs), max(xs)
    if xmax - xmin < 1:
        xmin, xmax = xmin - 0.5, xmax + 0.5

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - xmin) / (xmax - xmin) * (right - left), bottom - (y - lo) / (hi - lo) * (bottom - top))

    for v in yt:
        _, yy = px(xmin, v)
        draw.line((left, yy, right, yy), fill=GRID)
        text = _tick_label(v, yt)
        draw.text((left - 6 - font.getlength(text), yy - 7), text, fill=INK, font=font)
    span = xmax - xmin  # epochs are integers: every one up to 10, then round steps
    step = 1 if span <= 10 else int(math.ceil(nice_ticks(0, span, 8)[1]))
    for t in range(int(math.ceil(xmin)), int(math.floor(xmax)) + 1):
        if (t - int(math.ceil(xmin))) % step:
            continue
        xx, _ = px(t, lo)
        draw.line((xx, top, xx, bottom), fill=GRID)
        draw.line((xx, bottom, xx, bottom + 4), fill=INK)
        draw.text((xx - font.getlength(str(t)) / 2, bottom + 6), str(t), fill=INK, font=font)
    draw.line((left, top, left, bottom, right, bottom), fill=INK, width=1)
    pts = [px(x, y) for x, y in zip(xs, ys)]
    if len(pts) > 1:
        draw.line(pts, fill=colour, width=2)
    for x, y in pts:
        draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
    draw.text(((left + right) / 2 - font.getlength(x_label) / 2, bottom + 22), x_label, fill=INK, font=font)
    if y_label:
        draw.text((x0, top - 16), y_label, fill=GREY, font=font)


def training_curve(
    history: Sequence[Mapping[str, Any]], path: str | Path, *, metric: str = "eval/R@1", label: str | None = None
) -> Path:
    """A PNG with the mean training loss per epoch and, when the run evaluated during training
    (``train.eval_every``), ``metric`` per epoch (the eval split's R@1, in percent)."""
    from PIL import Image, ImageDraw

    path = Path(path)
    img = Image.new("RGB", (900, 340), "white")
    draw = ImageDraw.Draw(img)
    ep = [float(r["epoch"]) for r in history if "loss" in r]
    loss = [float(r["loss"]) for r in history if "loss" in r]
    _panel(draw, (10, 10, 440, 330), ep, loss, "training loss (mean per epoch)", (40, 90, 200), y_label="loss")
    ev = [(float(r["epoch"]), float(r[metric])) for r in history if metric in r]
    hi = max([v for _, v in ev] + [1.0])
    ticks = nice_ticks(0.0, hi * 1.1)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 10.0
    top = min(100.0, math.ceil(hi * 1.05 / step) * step)  # a round top above the best value
    _panel(
        draw,
        (460, 10, 890, 330),
        [e for e, _ in ev],
        [v for _, v in ev],
        label or f"{metric} (%)",
        (200, 80, 40),
        y_range=(0.0, top),
        y_label="%",
    )
    img.save(path)
    return path


# ------------------------------------------------------------------------------ map


def location_map(
    eval_set: EvalSet,
    top1: np.ndarray,
    path: str | Path,
    *,
    size: int = 760,
    background: Any = None,
    bounds: Mapping[str, float] | None = None,
    title: str | None = None,
    near_m: float = 50.0,
) -> Path:
    """A PNG map of the evaluation area, readable on its own: every reference tile (grey dot),
    every query at its true location — green when its top-1 is its own tile, orange when the
    top-1 is another tile within ``near_m`` metres, red when farther, with a faint line to where
    that top-1 lies — plus a legend, a scale bar, north, and the distribution of the top-1 errors.

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
    header, side = 48, 250

    def px(lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (lon - w_) / (e_ - w_) * size, header + (n_ - lat) / (n_ - s_) * size

    img = Image.new("RGB", (size + side, size + header), "white")
    if background is not None and bounds is not None:
        bw, bh = background.size
        fx = lambda lon: (lon - bounds["west"]) / (bounds["east"] - bounds["west"]) * bw  # noqa: E731
        fy = lambda lat: (bounds["north"] - lat) / (bounds["north"] - bounds["south"]) * bh  # noqa: E731
        crop = background.convert("RGB").crop((fx(w_), fy(n_), fx(e_), fy(s_))).resize((size, size))
        img.paste(Image.blend(crop, Image.new("RGB", crop.size, "white"), 0.6), (0, header))
    top1 = np.asarray(top1)
    hit = eval_set.reference_labels[top1] == eval_set.query_labels
    err = distance_m(qg, rg[top1])
    near = ~hit & (err <= near_m)
    far = ~hit & ~near
    rx, ry = px(rg[:, 0], rg[:, 1])
    qx, qy = px(qg[:, 0], qg[:, 1])
    tx, ty = px(rg[top1, 0], rg[top1, 1])
    # translucent layer: lines from far misses to their retrieved tile
    overlay = Image.new("RGBA", img.size, (0, 0, 0, 0))
    od = ImageDraw.Draw(overlay)
    for i in np.flatnonzero(far):
        od.line((qx[i], qy[i], tx[i], ty[i]), fill=(*RED, 55), width=1)
    img = Image.alpha_composite(img.convert("RGBA"), overlay).convert("RGB")
    draw = ImageDraw.Draw(img)
    for x, y in zip(rx, ry):
        draw.ellipse((x - 1.2, y - 1.2, x + 1.2, y + 1.2), fill=GREY)
    for mask, colour in ((hit, GREEN), (near, ORANGE), (far, RED)):
        for i in np.flatnonzero(mask):
            draw.ellipse((qx[i] - 3, qy[i] - 3, qx[i] + 3, qy[i] + 3), fill=colour, outline="white")
    draw.rectangle((0, header, size - 1, header + size - 1), outline=GREY)

    font, small, big = load_font(13), load_font(12), load_font(15)
    # header: what the map shows, and the numbers
    draw.text((10, 6), title or f"{eval_set.name}: where each query photo's top-1 tile is", fill=INK, font=big)
    draw.text(
        (10, 27),
        f"{len(qg)} queries, {len(rg)} reference tiles:  top-1 is the true tile for "
        f"{100 * hit.mean():.1f}%,  median error {np.median(err):.0f} m,  within 25 m "
        f"{100 * (err <= 25).mean():.1f}%,  within 100 m {100 * (err <= 100).mean():.1f}%",
        fill=INK,
        font=small,
    )
    # scale bar (a round number of metres near a fifth of the width) and north
    metres_per_px = span * 111_195.0 / size
    target = metres_per_px * size / 5
    bar_m = 10 ** math.floor(math.log10(target))
    bar_m = max(m for m in (bar_m, 2 * bar_m, 5 * bar_m) if m <= target)
    bar = bar_m / metres_per_px
    yb = size + header - 16
    draw.rectangle((10, yb - 8, 24 + bar + font.getlength(f"{bar_m:.0f} m") + 8, yb + 8), fill="white")
    draw.rectangle((14, yb - 3, 14 + bar, yb + 3), fill=INK)
    draw.text((20 + bar, yb - 8), f"{bar_m:.0f} m", fill=INK, font=font)
    xn, yn = size - 24, header + 12
    draw.polygon([(xn, yn), (xn - 7, yn + 18), (xn + 7, yn + 18)], fill=INK)
    draw.text((xn - 4, yn + 20), "N", fill=INK, font=font)

    # legend and the error distribution, right of the map
    x0, y = size + 14, header + 4
    draw.text((x0, y), "legend", fill=INK, font=big)
    y += 26

    def dot(x: float, yy: float, colour: tuple[int, int, int], r: float = 4) -> None:
        draw.ellipse((x - r, yy - r, x + r, yy + r), fill=colour, outline="white")

    rows = [
        (GREY, 2, "reference tile", ""),
        (GREEN, 4, "query, top-1 = its tile", f"{int(hit.sum())}"),
        (ORANGE, 4, f"query, other tile <= {near_m:.0f} m", f"{int(near.sum())}"),
        (RED, 4, f"query, top-1 > {near_m:.0f} m away", f"{int(far.sum())}"),
    ]
    for colour, r, text, count in rows:
        dot(x0 + 6, y + 8, colour, r)
        draw.text((x0 + 18, y), text, fill=INK, font=small)
        if count:
            draw.text((size + side - 12 - small.getlength(count), y), count, fill=INK, font=small)
        y += 20
    draw.line((x0, y + 8, x0 + 12, y + 8), fill=(240, 170, 165), width=2)
    draw.text((x0 + 18, y), "faint line: red query -> its top-1", fill=INK, font=small)
    y += 40
    draw.text((x0, y), "top-1 error (metres)", fill=INK, font=big)
    y += 26
    edges = [25, 50, 100, 250, 500]
    labels = [f"{a}-{b} m" for a, b in zip([0, *edges], edges)] + [f"> {edges[-1]} m"]
    counts = np.histogram(err, bins=[-1.0, *edges, np.inf])[0]
    share = counts / max(len(err), 1)
    bar_w = side - 134
    for text, _c, f in zip(labels, counts, share):
        draw.text((x0, y), text, fill=INK, font=small)
        draw.rectangle((x0 + 66, y + 2, x0 + 66 + max(1, f * bar_w), y + 13), fill=BLUE)
        draw.text((x0 + 72 + bar_w, y), f"{100 * f:.0f}%", fill=INK, font=small)
        y += 19
    draw.text((x0, y + 4), f"share of the {len(err)} queries per band", fill=GREY, font=small)
    img.save(path)
    return path
