"""The synthetic city: a deterministic, vectorised numpy generator and two renderers.

The map is a raster (``map_size`` × ``map_size`` pixels, ``metres_per_pixel`` each, north up,
row 0 is the northern edge, x grows east). It is built from districts (a Voronoi partition), each
with its own street orientation, block size, curvature and building style; district borders and
a few long curves are arterials; a river crosses the map. Every pixel gets a ground class, an
aerial colour, a height (buildings, trees) and, on buildings, a facade colour, wall normal and
position along the wall for windows.

Two renderers read that raster:

- :func:`render_tiles`: north-up aerial tiles centred on locations (bilinear-free point sampling
  with 2×2 supersampling, so it is fast and exact).
- :func:`render_panoramas`: equirectangular 360° ground views by ray casting over the height map
  from eye height ("voxel space": per column, march outwards, keep the running highest projected
  row, colour each pixel by the first step that covers it). Column 0 looks north and azimuth
  grows clockwise (east at W/4), the convention of ``geokit.augment``.

Only numpy at module level; scipy is imported where used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geokit.geo import EARTH_RADIUS_M

# Ground classes.
GRASS, ROAD, SIDEWALK, BUILDING, WATER, PARKING, PLAZA, TREE = range(8)

# District types and their style.
DOWNTOWN, RESIDENTIAL, INDUSTRIAL, PARK = range(4)
_TYPE_P = np.array([0.25, 0.42, 0.2, 0.13])
#                        block u,   block v,   road w, sidewalk, lot,  setback, gap, empty p, height lo/hi
_STYLE: dict[int, dict[str, Any]] = {
    DOWNTOWN: dict(
        bu=(55, 85), bv=(55, 85), road=12, side=4, lot=(18, 30), setback=0.5, gap=1.0, empty=0.10, h=(14.0, 55.0)
    ),
    RESIDENTIAL: dict(
        bu=(70, 110), bv=(38, 56), road=8, side=3, lot=(11, 17), setback=3.5, gap=3.0, empty=0.14, h=(5.0, 12.0)
    ),
    INDUSTRIAL: dict(
        bu=(90, 140), bv=(70, 110), road=10, side=2, lot=(30, 50), setback=4.0, gap=5.0, empty=0.30, h=(6.0, 14.0)
    ),
    PARK: dict(
        bu=(180, 260), bv=(180, 260), road=8, side=2, lot=(40, 60), setback=5.0, gap=5.0, empty=1.0, h=(0.0, 0.0)
    ),
}
# Facade palettes per type; each entry has a paired roof colour (brick houses get red roofs...),
# so the two views are related through the building, not through a shared pixel.
_FACADES = {
    DOWNTOWN: [
        ((150, 160, 175), (90, 95, 100)),
        ((95, 130, 165), (70, 75, 85)),
        ((200, 190, 170), (120, 115, 110)),
        ((120, 120, 125), (150, 150, 150)),
        ((170, 120, 95), (95, 80, 70)),
        ((215, 215, 210), (175, 175, 170)),
    ],
    RESIDENTIAL: [
        ((235, 225, 200), (160, 60, 45)),
        ((205, 120, 80), (130, 50, 40)),
        ((240, 210, 120), (90, 80, 80)),
        ((250, 250, 245), (60, 60, 70)),
        ((230, 180, 180), (150, 90, 60)),
        ((160, 190, 160), (110, 70, 50)),
        ((170, 90, 70), (70, 70, 75)),
    ],
    INDUSTRIAL: [
        ((200, 195, 180), (205, 205, 200)),
        ((175, 180, 185), (225, 225, 220)),
        ((80, 110, 150), (180, 185, 190)),
        ((110, 140, 110), (190, 190, 180)),
        ((190, 160, 120), (160, 160, 155)),
    ],
}
_GROUND = {
    GRASS: (82, 128, 62),
    ROAD: (72, 72, 78),
    SIDEWALK: (172, 168, 160),
    WATER: (48, 88, 138),
    PARKING: (96, 96, 100),
    PLAZA: (186, 174, 150),
}
SUN_AZIMUTH = math.radians(150.0)  # sun in the south-south-east: shadows fall north-north-west
SUN_ELEVATION = math.radians(45.0)


@dataclass
class City:
    """The map raster and what the renderers need."""

    seed: int
    size: int
    mpp: float  # metres per pixel
    cls: np.ndarray  # (S, S) uint8 ground class (TREE over the ground it shades)
    aerial: np.ndarray  # (S, S, 3) uint8 top-down colour
    ground: np.ndarray  # (S, S, 3) uint8 colour of the ground surface seen from the street
    height: np.ndarray  # (S, S) float32 metres (buildings, trees; 0 elsewhere)
    facade: np.ndarray  # (S, S, 3) uint8 wall colour on building pixels
    normal: np.ndarray  # (S, S) float32 wall normal azimuth (radians, clockwise from north)
    along: np.ndarray  # (S, S) float32 metres along the nearest wall (window columns)
    district: np.ndarray  # (S, S) int16 district index
    district_type: np.ndarray  # (K,) district types
    candidates: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # (n, 2) x, y on road centres


# ------------------------------------------------------------------------------- helpers


def _hash(*keys: np.ndarray) -> np.ndarray:
    """A vectorised 64-bit integer mix (splitmix64 finaliser) of integer arrays."""
    h = np.uint64(0x9E3779B97F4A7C15)
    out = np.zeros(np.broadcast(*keys).shape, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in keys:
            out = (out ^ np.asarray(k).astype(np.int64).astype(np.uint64)) * np.uint64(0xBF58476D1CE4E5B9) + h
            out ^= out >> np.uint64(31)
            out *= np.uint64(0x94D049BB133111EB)
            out ^= out >> np.uint64(29)
    return out


def _unit(h: np.ndarray, salt: int) -> np.ndarray:
    """Uniform [0, 1) floats from hashes (one independent stream per salt)."""
    return (_hash(h, np.int64(salt)) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _value_noise(rng: np.random.Generator, size: int, cell: int) -> np.ndarray:
    """Smooth noise in [0, 1): a random grid upsampled bilinearly."""
    n = size // cell + 2
    grid = rng.random((n, n)).astype(np.float32)
    t = (np.arange(size, dtype=np.float32) + 0.5) / cell
    i = t.astype(np.int64)
    f = t - i
    f = f * f * (3 - 2 * f)
    a = grid[i][:, i] * (1 - f)[None, :] + grid[i][:, i + 1] * f[None, :]
    b = grid[i + 1][:, i] * (1 - f)[None, :] + grid[i + 1][:, i + 1] * f[None, :]
    return a * (1 - f)[:, None] + b * f[:, None]


# ------------------------------------------------------------------------------- the city


# generate_city runs the steps below in this order. The steps that draw from the one ``rng``
# stream (districts, street frames, arterials, river, ground texture) must keep their order, and
# the order of the draws inside each, or every city changes (tests/test_synthetic_golden.py).


def generate_city(seed: int, size: int = 1280, mpp: float = 1.0) -> City:
    """Build the city raster for ``seed`` (pure function of its arguments)."""
    rng = np.random.default_rng([seed, 1])
    S = size
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)

    districts = _districts(rng, S, xx, yy)
    streets = _streets(rng, districts, xx, yy)
    water, bank = _river(rng, S, xx, yy)
    types = districts.types
    t_k = types[streets.k]  # district type per pixel
    is_park = t_k == PARK
    lots = _lots_and_buildings(streets, types, is_park, water, bank)
    height_b = _building_heights(lots, t_k)
    facade, roof = _building_colours(lots, t_k, S)
    normal, along = _walls(lots, streets, mpp)
    roof_shade = _roof_shade(lots, t_k)
    cls = _ground_classes(lots, streets, t_k, is_park, water, bank, S)
    trees = _trees(seed, S, xx, yy, cls, t_k, streets.centre)

    height = np.where(lots.bldg, height_b, 0.0).astype(np.float32)
    height = np.where(trees.tree, trees.height * (1 - 0.25 * (trees.rd / trees.tr) ** 2), height).astype(np.float32)

    ground, nz = _ground_colours(rng, S, cls, streets, lots)
    aerial = _aerial_colours(ground, roof, roof_shade, nz, lots.bldg, trees)
    aerial = _cast_shadows(aerial, height, mpp)

    cls_out = np.where(trees.tree, TREE, cls).astype(np.uint8)
    city = City(
        seed,
        S,
        mpp,
        cls_out,
        aerial,
        ground.astype(np.uint8),
        height,
        np.where(lots.bldg[..., None], facade, 0).astype(np.uint8),
        normal,
        along,
        districts.index,
        types,
    )
    city.candidates = _candidates(cls, streets.centre)
    return city


@dataclass
class _Districts:
    """The Voronoi partition into districts."""

    seeds: np.ndarray  # (K, 2) x, y of each district's seed point
    types: np.ndarray  # (K,) district type
    d1: np.ndarray  # (S, S) distance to the nearest seed
    d2: np.ndarray  # (S, S) distance to the second nearest seed
    index: np.ndarray  # (S, S) int16 nearest seed: the district


def _districts(rng: np.random.Generator, S: int, xx: np.ndarray, yy: np.ndarray) -> _Districts:
    """Jittered seeds (roughly one per 380 px square), nearest and second nearest."""
    n_side = max(2, round(S / 380))
    gx, gy = np.meshgrid((np.arange(n_side) + 0.5) * S / n_side, (np.arange(n_side) + 0.5) * S / n_side)
    seeds = np.c_[gx.ravel(), gy.ravel()] + rng.uniform(-0.35, 0.35, (n_side * n_side, 2)) * S / n_side
    K = len(seeds)
    dtype_k = rng.choice(4, size=K, p=_TYPE_P)
    if not (dtype_k == DOWNTOWN).any():
        dtype_k[rng.integers(K)] = DOWNTOWN
    d1 = np.full((S, S), np.inf, np.float32)
    d2 = np.full((S, S), np.inf, np.float32)
    dist_id = np.zeros((S, S), np.int16)
    for j, (sx, sy) in enumerate(seeds):
        d = np.hypot(xx - sx, yy - sy)
        closer = d < d1
        d2 = np.where(closer, d1, np.minimum(d2, d))
        dist_id = np.where(closer, np.int16(j), dist_id)
        d1 = np.where(closer, d, d1)
    return _Districts(seeds, dtype_k, d1, d2, dist_id)


@dataclass
class _Streets:
    """Every pixel in its district's street frame, and the street network."""

    k: np.ndarray  # (S, S) int64 district index
    theta: np.ndarray  # (K,) street orientation per district
    bu: np.ndarray  # (K,) block size along u
    bv: np.ndarray  # (K,) block size along v
    side_w: np.ndarray  # (K,) sidewalk width
    u: np.ndarray  # (S, S) coordinates in the (curved) street frame
    v: np.ndarray
    cu: np.ndarray  # (S, S) position inside the block
    cv: np.ndarray
    du: np.ndarray  # (S, S) distance to the nearest street line of each family
    dv: np.ndarray
    local_d: np.ndarray  # (S, S) distance to the nearest local street line
    half: np.ndarray  # (S, S) half width of the local road
    art_d: np.ndarray  # (S, S) distance to the nearest arterial
    art_half: float  # half width of an arterial
    road: np.ndarray  # (S, S) bool
    side: np.ndarray  # (S, S) bool sidewalk
    centre: np.ndarray  # (S, S) distance to the road's centre line, in units of its half width


def _streets(rng: np.random.Generator, districts: _Districts, xx: np.ndarray, yy: np.ndarray) -> _Streets:
    """Per-district street grids (orientation, block size, curvature) plus the arterials."""
    dtype_k, seeds = districts.types, districts.seeds
    K = len(seeds)
    theta = rng.uniform(0, np.pi / 2, K).astype(np.float32)
    bu = np.array([rng.uniform(*_STYLE[t]["bu"]) for t in dtype_k], np.float32)
    bv = np.array([rng.uniform(*_STYLE[t]["bv"]) for t in dtype_k], np.float32)
    road_w = np.array([_STYLE[t]["road"] for t in dtype_k], np.float32)
    side_w = np.array([_STYLE[t]["side"] for t in dtype_k], np.float32)
    amp = rng.uniform(0, 18, K).astype(np.float32) * (rng.random(K) < 0.6)
    wav = rng.uniform(250, 600, K).astype(np.float32)
    pha = rng.uniform(0, 2 * np.pi, (K, 2)).astype(np.float32)
    off = rng.uniform(0, 1, (K, 2)).astype(np.float32)

    k = districts.index.astype(np.int64)
    c, s = np.cos(theta)[k], np.sin(theta)[k]
    rx, ry = xx - seeds[k, 0].astype(np.float32), yy - seeds[k, 1].astype(np.float32)
    u = c * rx + s * ry
    v = -s * rx + c * ry
    # Curved streets: each family of lines bends along the other coordinate.
    u = u + amp[k] * np.sin(2 * np.pi * v / wav[k] + pha[k, 0]) + off[k, 0] * bu[k]
    v = v + 0.6 * amp[k] * np.sin(2 * np.pi * u / (1.3 * wav[k]) + pha[k, 1]) + off[k, 1] * bv[k]
    cu, cv = np.mod(u, bu[k]), np.mod(v, bv[k])
    du, dv = np.minimum(cu, bu[k] - cu), np.minimum(cv, bv[k] - cv)
    local_d = np.minimum(du, dv)
    half = road_w[k] / 2

    art_d = _arterials(rng, districts, xx, yy)
    art_half = 8.0
    road = (local_d < half) | (art_d < art_half)
    side = ~road & ((local_d < half + side_w[k]) | (art_d < art_half + 3))
    # Distance to the road's centre line, in units of its half width (candidate sites: < 0.15).
    centre = np.where(art_d < art_half, art_d / art_half, local_d / half)
    return _Streets(k, theta, bu, bv, side_w, u, v, cu, cv, du, dv, local_d, half, art_d, art_half, road, side, centre)


def _arterials(rng: np.random.Generator, districts: _Districts, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Distance to the nearest arterial: the district borders ((d2 - d1) / 2 is the distance to
    the bisector) and two long curves."""
    S = len(xx)
    border_d = (districts.d2 - districts.d1) / 2
    art_d = border_d
    for _ in range(2):
        ang = rng.uniform(0, np.pi)
        px, py = rng.uniform(0.25, 0.75, 2) * S
        n = -np.sin(ang) * (xx - px) + np.cos(ang) * (yy - py)
        t = np.cos(ang) * (xx - px) + np.sin(ang) * (yy - py)
        n = n + rng.uniform(20, 60) * np.sin(2 * np.pi * t / rng.uniform(500, 900) + rng.uniform(0, 6.3))
        art_d = np.minimum(art_d, np.abs(n))
    return art_d


def _river(rng: np.random.Generator, S: int, xx: np.ndarray, yy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A meandering band of water and its grass banks (roads cross it on bridges)."""
    ang = rng.uniform(0, np.pi)
    px, py = rng.uniform(0.3, 0.7, 2) * S
    n = -np.sin(ang) * (xx - px) + np.cos(ang) * (yy - py)
    t = np.cos(ang) * (xx - px) + np.sin(ang) * (yy - py)
    n = n + 45 * np.sin(2 * np.pi * t / 700 + rng.uniform(0, 6.3))
    river_w = rng.uniform(14, 22)
    water = np.abs(n) < river_w
    bank = (np.abs(n) < river_w + 10) & ~water
    return water, bank


@dataclass
class _Lots:
    """Lots inside blocks and the building footprints on them."""

    inside_block: np.ndarray  # (S, S) bool
    lot_empty: np.ndarray  # (S, S) bool: the lot has no building
    bldg: np.ndarray  # (S, S) bool building footprint
    hl: np.ndarray  # (S, S) uint64 hash of the lot (per-lot random streams)
    edges: np.ndarray  # (4, S, S) metres to the footprint's u0, u1, v0, v1 edges (< 0: outside)


def _lots_and_buildings(
    streets: _Streets, dtype_k: np.ndarray, is_park: np.ndarray, water: np.ndarray, bank: np.ndarray
) -> _Lots:
    """Cut each block into lots facing a street and place one footprint per lot."""
    k, cu, cv = streets.k, streets.cu, streets.cv
    bu, bv = streets.bu, streets.bv
    sty = {key: np.array([_STYLE[t][key] for t in dtype_k], np.float32) for key in ("setback", "gap", "empty")}
    lot_lo = np.array([_STYLE[t]["lot"][0] for t in dtype_k], np.float32)
    lot_hi = np.array([_STYLE[t]["lot"][1] for t in dtype_k], np.float32)
    blk_u, blk_v = np.floor(streets.u / bu[k]).astype(np.int64), np.floor(streets.v / bv[k]).astype(np.int64)
    edge = streets.half + streets.side_w[k]
    inner_u, inner_v = bu[k] - 2 * edge, bv[k] - 2 * edge
    hb = _hash(k, blk_u, blk_v)
    lot_w = lot_lo[k] + (lot_hi[k] - lot_lo[k]) * _unit(hb, 1).astype(np.float32)
    nu = np.maximum(1, np.round(inner_u / lot_w))
    nv = np.maximum(1, np.minimum(2, np.round(inner_v / lot_w)))  # lots face a street
    lu = (cu - edge) / np.maximum(inner_u, 1) * nu
    lv = (cv - edge) / np.maximum(inner_v, 1) * nv
    iu, iv = np.floor(lu), np.floor(lv)
    fu, fv = (lu - iu) * inner_u / nu, (lv - iv) * inner_v / nv  # metres inside the lot
    lot_su, lot_sv = inner_u / nu, inner_v / nv
    hl = _hash(hb, iu.astype(np.int64), iv.astype(np.int64))
    # Setback only on the street side of the lot; gaps between neighbours.
    street_u0, street_u1 = iu == 0, iu == nu - 1
    street_v0, street_v1 = iv == 0, iv == nv - 1
    sb, gp = sty["setback"][k], sty["gap"][k] / 2
    m_u0 = np.where(street_u0, sb, gp)
    m_u1 = np.where(street_u1, sb, gp)
    m_v0 = np.where(street_v0, sb, gp)
    m_v1 = np.where(street_v1, sb, gp)
    # Per-lot footprint jitter so houses differ in shape.
    shrink = (_unit(hl, 2) * 0.25 * np.minimum(lot_su, lot_sv)).astype(np.float32) * (dtype_k[k] != DOWNTOWN)
    e_u0, e_u1 = fu - m_u0 - shrink * (~street_u0), lot_su - fu - m_u1 - shrink * (~street_u1)
    e_v0, e_v1 = fv - m_v0 - shrink * (~street_v0), lot_sv - fv - m_v1
    inside_block = (cu > edge) & (cu < bu[k] - edge) & (cv > edge) & (cv < bv[k] - edge)
    lot_empty = _unit(hl, 3) < sty["empty"][k]
    bldg = inside_block & ~lot_empty & (e_u0 > 0) & (e_u1 > 0) & (e_v0 > 0) & (e_v1 > 0)
    bldg &= ~streets.road & ~streets.side & ~water & ~bank & ~is_park
    return _Lots(inside_block, lot_empty, bldg, hl, np.stack([e_u0, e_u1, e_v0, e_v1]))


def _building_heights(lots: _Lots, t_k: np.ndarray) -> np.ndarray:
    """Height by district type with per-building jitter (downtown skewed towards low)."""
    h_lo = np.array([_STYLE[t]["h"][0] for t in range(4)], np.float32)[t_k]
    h_hi = np.array([_STYLE[t]["h"][1] for t in range(4)], np.float32)[t_k]
    r_h = _unit(lots.hl, 4).astype(np.float32)
    return h_lo + (h_hi - h_lo) * np.where(t_k == DOWNTOWN, r_h**2, r_h)


def _building_colours(lots: _Lots, t_k: np.ndarray, S: int) -> tuple[np.ndarray, np.ndarray]:
    """Facade and roof colours ``(S, S, 3)`` float32 from the district type's palette."""
    bldg, hl = lots.bldg, lots.hl
    facade = np.zeros((S, S, 3), np.float32)
    roof = np.zeros((S, S, 3), np.float32)
    pick = _unit(hl, 5)
    for t, pal in _FACADES.items():
        sel = bldg & (t_k == t)
        if not sel.any():
            continue
        idx = np.minimum((pick[sel] * len(pal)).astype(np.int64), len(pal) - 1)
        fac = np.array([p[0] for p in pal], np.float32)[idx]
        rf = np.array([p[1] for p in pal], np.float32)[idx]
        jit = (_unit(hl[sel], 6)[:, None].astype(np.float32) - 0.5) * 40
        facade[sel] = np.clip(fac + jit, 0, 255)
        # The roof takes some of the wall's colour (paint, trim, skylights): a weak real-world
        # link that makes a building recognisable from both views.
        roof[sel] = np.clip(0.6 * rf + 0.4 * fac + 0.8 * jit, 0, 255)
    return facade, roof


def _walls(lots: _Lots, streets: _Streets, mpp: float) -> tuple[np.ndarray, np.ndarray]:
    """Wall normal (nearest footprint edge) and position along it, in the district's frame."""
    nearest = np.argmin(lots.edges, axis=0)
    # Frame axes in map terms: +u points along (cos θ, sin θ) in (x, y-down) => azimuth.
    az_u = np.pi / 2 + streets.theta[streets.k]  # azimuth (clockwise from north) of +u
    normal = np.choose(nearest, [az_u + np.pi, az_u, az_u + np.pi / 2 + np.pi, az_u + np.pi / 2])
    normal = np.mod(normal, 2 * np.pi).astype(np.float32)
    along = np.where(nearest < 2, streets.v, streets.u).astype(np.float32) * mpp
    return normal, along


def _roof_shade(lots: _Lots, t_k: np.ndarray) -> np.ndarray:
    """Roof texture: pitched roofs (residential) get a ridge; flat roofs get a parapet and units."""
    e_v0, e_v1 = lots.edges[2], lots.edges[3]
    ridge = np.abs(np.minimum(e_v0, e_v1) / np.maximum(e_v0 + e_v1, 1e-3))  # 0 at eaves, .5 at ridge
    return np.where(
        t_k == RESIDENTIAL,
        0.75 + 0.5 * ridge * np.where(e_v0 < e_v1, 1.0, 0.7),
        np.where(np.min(lots.edges, axis=0) < 1.0, 0.8, 1.0),
    )


def _ground_classes(
    lots: _Lots, streets: _Streets, t_k: np.ndarray, is_park: np.ndarray, water: np.ndarray, bank: np.ndarray, S: int
) -> np.ndarray:
    """The ground class per pixel (before trees); later assignments win."""
    inside_block, lot_empty, bldg = lots.inside_block, lots.lot_empty, lots.bldg
    cls = np.full((S, S), GRASS, np.uint8)
    empty_lot = inside_block & lot_empty & ~is_park
    cls[empty_lot & (t_k != RESIDENTIAL)] = PARKING
    cls[empty_lot & (t_k == DOWNTOWN) & (_unit(lots.hl, 7) < 0.5)] = PLAZA
    cls[inside_block & ~lot_empty & ~bldg & (t_k == DOWNTOWN)] = PLAZA
    cls[inside_block & ~lot_empty & ~bldg & (t_k == INDUSTRIAL)] = PARKING
    cls[streets.side] = SIDEWALK
    cls[water] = WATER
    cls[bank] = GRASS
    cls[streets.road] = ROAD
    cls[bldg] = BUILDING
    return cls


@dataclass
class _Trees:
    """Tree crowns on a jittered grid."""

    tree: np.ndarray  # (S, S) bool crown
    height: np.ndarray  # (S, S) float32 crown top of the pixel's grid cell
    rd: np.ndarray  # (S, S) distance to the cell's trunk
    tr: np.ndarray  # (S, S) crown radius of the cell's tree
    ht: np.ndarray  # (S, S) uint64 hash of the cell (per-tree random streams)


def _trees(
    seed: int, S: int, xx: np.ndarray, yy: np.ndarray, cls: np.ndarray, t_k: np.ndarray, centre: np.ndarray
) -> _Trees:
    """A jittered grid; presence depends on the ground under the cell centre."""
    g = 9
    cx, cy = np.floor(xx / g).astype(np.int64), np.floor(yy / g).astype(np.int64)
    ht = _hash(np.int64(seed), cx, cy)
    tx = (cx + 0.2 + 0.6 * _unit(ht, 1)) * g
    ty = (cy + 0.2 + 0.6 * _unit(ht, 2)) * g
    tr = 2.2 + 2.0 * _unit(ht, 3)
    ix, iy = np.clip(tx.astype(np.int64), 0, S - 1), np.clip(ty.astype(np.int64), 0, S - 1)
    under = cls[iy, ix]
    t_under = t_k[iy, ix]
    p_tree = np.select(
        [under == GRASS, (under == SIDEWALK) & (t_under == RESIDENTIAL), (under == PLAZA) | (under == PARKING)],
        [0.55, 0.45, 0.12],
        0.0,
    )
    p_tree = np.where((under == GRASS) & (t_under == INDUSTRIAL), 0.2, p_tree)
    rd = np.hypot(xx - tx, yy - ty)
    tree = (_unit(ht, 4) < p_tree) & (rd < tr) & (cls != BUILDING) & (cls != WATER) & ~((cls == ROAD) & (centre < 0.5))
    tree_h = (6.0 + 6.0 * _unit(ht, 5)).astype(np.float32)
    return _Trees(tree, tree_h, rd, tr, ht)


def _ground_colours(
    rng: np.random.Generator, S: int, cls: np.ndarray, streets: _Streets, lots: _Lots
) -> tuple[np.ndarray, np.ndarray]:
    """Ground colour ``(S, S, 3)`` float32 in [0, 255] with texture and road markings, and the
    texture noise ``(S, S)`` (the aerial view reuses it on roofs and trees)."""
    nz = (_value_noise(rng, S, 7) - 0.5) * 0.25 + (_value_noise(rng, S, 31) - 0.5) * 0.2
    base = np.zeros((S, S, 3), np.float32)
    for cl, col in _GROUND.items():
        base[cls == cl] = col
    base *= (1 + nz)[..., None]
    # Lane markings: dashed centre lines on local roads, solid edge lines on arterials.
    u, v, art_d = streets.u, streets.v, streets.art_d
    along_road = np.where(streets.du < streets.dv, v, u)
    dash = (np.abs(streets.local_d) < 0.45) & (np.mod(along_road, 8) < 4) & (art_d >= streets.art_half) & (cls == ROAD)
    base[dash] = (235, 235, 225)
    art_line = (np.abs(art_d - 0.5) < 0.5) & (cls == ROAD)
    base[art_line] = (230, 200, 60)
    stalls = (cls == PARKING) & (np.mod(u, 2.7) < 0.35) & (_unit(lots.hl, 8) < 0.8)
    base[stalls] = (220, 220, 215)
    return np.clip(base, 0, 255), nz


def _aerial_colours(
    ground: np.ndarray, roof: np.ndarray, roof_shade: np.ndarray, nz: np.ndarray, bldg: np.ndarray, trees: _Trees
) -> np.ndarray:
    """The top-down colour before shadows: ground, shaded roofs, tree crowns."""
    aerial = ground.copy()
    rs = roof * roof_shade[..., None] * (1 + 0.5 * nz[..., None])
    aerial[bldg] = rs[bldg]
    leaf = (0.75 + 0.35 * (1 - trees.rd / trees.tr) + nz * 1.5)[..., None]
    tree_col = np.array([52, 98, 44], np.float32) * (0.85 + 0.3 * _unit(trees.ht, 6))[..., None]
    return np.where(trees.tree[..., None], tree_col * leaf, aerial)


def _cast_shadows(aerial: np.ndarray, height: np.ndarray, mpp: float) -> np.ndarray:
    """Darken pixels in shadow (something towards the sun rises above the sun ray); uint8."""
    S = len(height)
    sx, sy = math.sin(SUN_AZIMUTH), -math.cos(SUN_AZIMUTH)
    shade = np.zeros((S, S), bool)
    tan_e = math.tan(SUN_ELEVATION)
    for step in range(1, int(min(60, np.max(height) / tan_e / mpp)) + 1, 1):
        ox, oy = int(round(step * sx)), int(round(step * sy))
        shifted = np.zeros_like(height)
        ys0, ys1 = max(0, -oy), min(S, S - oy)
        xs0, xs1 = max(0, -ox), min(S, S - ox)
        shifted[ys0:ys1, xs0:xs1] = height[ys0 + oy : ys1 + oy, xs0 + ox : xs1 + ox]
        shade |= shifted > height + step * mpp * tan_e
    aerial = np.where(shade[..., None], aerial * 0.55, aerial)
    return np.clip(aerial, 0, 255).astype(np.uint8)


def _candidates(cls: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Candidate street locations ``(n, 2)`` x, y: road centre lines, away from the border."""
    margin = 8
    cand = (cls == ROAD) & (centre < 0.15)
    cand[:margin] = cand[-margin:] = False
    cand[:, :margin] = cand[:, -margin:] = False
    ys, xs = np.nonzero(cand)
    return np.c_[xs, ys].astype(np.float64) + 0.5


def sample_locations(city: City, n: int, spacing_m: float, seed: int) -> np.ndarray:
    """Up to ``n`` street locations ``(x, y)`` in pixels, at least ``spacing_m`` apart, spread
    uniformly over the road network (random order, greedy thinning)."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng([seed, 2])
    pts = city.candidates[rng.permutation(len(city.candidates))]
    r = spacing_m / city.mpp
    # Keep one candidate per r-sized cell first (cheap), then resolve the remaining close pairs.
    cell = np.floor(pts / r).astype(np.int64)
    _, first = np.unique(cell[:, 0] * 1_000_003 + cell[:, 1], return_index=True)
    pts = pts[np.sort(first)]
    keep = np.ones(len(pts), bool)
    for i, j in sorted(cKDTree(pts).query_pairs(r)):
        if keep[i] and keep[j]:
            keep[j] = False  # the earlier (random order) point wins
    pts = pts[keep]
    return pts[:n]


# ------------------------------------------------------------------------------- rendering


def render_tiles(city: City, xy: np.ndarray, size: int, tile_m: float, chunk: int = 256) -> np.ndarray:
    """North-up aerial tiles ``(N, size, size, 3)`` uint8 centred on ``xy`` (pixels)."""
    S = city.size
    span = tile_m / city.mpp
    sub = 2  # 2x2 supersampling
    g = (np.arange(size * sub) + 0.5) / (size * sub) - 0.5
    out = np.empty((len(xy), size, size, 3), np.uint8)
    src = city.aerial.astype(np.float32)
    for a in range(0, len(xy), chunk):
        p = xy[a : a + chunk]
        X = np.clip((p[:, 0, None, None] + g[None, None, :] * span).astype(np.int64), 0, S - 1)
        Y = np.clip((p[:, 1, None, None] + g[None, :, None] * span).astype(np.int64), 0, S - 1)
        img = src[Y, X]  # (n, size*sub, size*sub, 3)
        img = img.reshape(len(p), size, sub, size, sub, 3).mean(axis=(2, 4))
        out[a : a + len(p)] = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    return out


def _distances(max_m: float, steps: int) -> np.ndarray:
    """Ray-march distances: fine near the eye, coarser far away (geometric)."""
    return (0.4 * (max_m / 0.4) ** (np.arange(steps) / (steps - 1))).astype(np.float32)


def render_panoramas(
    city: City,
    xy: np.ndarray,
    size: tuple[int, int],
    *,
    headings: np.ndarray | None = None,
    eye: float = 1.7,
    max_m: float = 160.0,
    steps: int = 112,
    haze_m: float = 180.0,
    chunk: int = 48,
) -> np.ndarray:
    """Ground panoramas ``(N, H, W, 3)`` uint8 at ``xy`` (pixels): equirectangular, 360° over
    the width, square pixels (so the vertical field of view is H/W·360°, centred on the
    horizon), column 0 facing north (or ``headings`` radians clockwise from north), azimuth
    growing clockwise. ``eye`` is the camera height and ``max_m`` the view distance in metres."""
    H, W = size
    S, mpp = city.size, city.mpp
    dphi = 2 * np.pi / W
    phi = (H / 2 - np.arange(H) - 0.5) * dphi  # elevation of each row's centre
    tan_phi = np.tan(np.clip(phi, -1.45, 1.45)).astype(np.float32)
    dist = _distances(max_m, steps)
    n_steps = len(dist)
    haze = np.array([200, 210, 220], np.float32)
    sky_top, sky_hor = np.array([70, 120, 200], np.float32), np.array([185, 205, 230], np.float32)
    ramp = np.clip(phi / (np.pi / 2), 0, 1)[:, None] ** 0.6
    sky = (sky_hor * (1 - ramp) + sky_top * ramp).astype(np.float32)  # (H, 3)
    sun_x, sun_y = math.sin(SUN_AZIMUTH), math.cos(SUN_AZIMUTH)
    height, cls = city.height, city.cls
    ground, facade = city.ground.astype(np.float32), city.facade.astype(np.float32)
    out = np.empty((len(xy), H, W, 3), np.uint8)
    for a in range(0, len(xy), chunk):
        p = xy[a : a + chunk]
        n = len(p)
        head = np.zeros(n, np.float32) if headings is None else headings[a : a + chunk].astype(np.float32)
        az = (2 * np.pi * (np.arange(W) + 0.5) / W)[None, :] + head[:, None]  # (n, W)
        ex, ny_ = np.sin(az).astype(np.float32), np.cos(az).astype(np.float32)
        X = p[:, 0, None, None] + ex[..., None] * (dist / mpp)  # (n, W, steps)
        Y = p[:, 1, None, None] - ny_[..., None] * (dist / mpp)
        inside = (X >= 0) & (X < S) & (Y >= 0) & (Y < S)
        ix = np.clip(X.astype(np.int64), 0, S - 1)
        iy = np.clip(Y.astype(np.int64), 0, S - 1)
        h = np.where(inside, height[iy, ix], 0.0)
        # Top row covered by each step; running minimum = occlusion; first covering step per row.
        top = H / 2 - 0.5 - np.arctan2(h - eye, dist) / dphi
        cm = np.minimum.accumulate(top, axis=2)
        kk = np.clip(np.ceil(cm), 0, H).astype(np.int64)  # rows y < kk are not yet covered
        flat = (np.arange(n * W)[:, None] * (H + 1) + kk.reshape(n * W, n_steps)).ravel()
        hist = np.bincount(flat, minlength=n * W * (H + 1)).reshape(n, W, H + 1)
        # first(y) = #{s: kk_s > y} = sum of hist over k > y
        rev = np.cumsum(hist[..., ::-1], axis=2)[..., ::-1]  # rev[k] = #{s: kk_s >= k}
        first = np.transpose(rev[..., 1:], (0, 2, 1))  # (n, H, W): steps not covering row y
        is_sky = first >= n_steps
        s_idx = np.minimum(first, n_steps - 1)
        gi = np.take_along_axis(iy.transpose(0, 2, 1), s_idx, axis=1)  # (n, H, W) via steps axis
        gj = np.take_along_axis(ix.transpose(0, 2, 1), s_idx, axis=1)
        ins = np.take_along_axis(inside.transpose(0, 2, 1), s_idx, axis=1)
        d = dist[s_idx]
        c = cls[gi, gj]
        z = eye + d * tan_phi[None, :, None]  # world height of each pixel's hit
        col = ground[gi, gj]
        # Buildings: facade colour, sun shading by wall normal, windows on a floor/column grid.
        b = (c == BUILDING) & (z > 0.05)
        if b.any():
            nrm = city.normal[gi[b], gj[b]]
            lit = 0.62 + 0.38 * np.maximum(0.0, np.sin(nrm) * sun_x + np.cos(nrm) * sun_y)
            f = facade[gi[b], gj[b]] * lit[:, None]
            al = city.along[gi[b], gj[b]]
            zb = z[b]
            hb = height[gi[b], gj[b]]
            win = (
                (np.mod(zb, 3.2) > 1.0)
                & (np.mod(zb, 3.2) < 2.3)
                & (np.mod(al, 3.0) > 0.9)
                & (np.mod(al, 3.0) < 2.1)
                & (zb < hb - 0.6)
                & (zb > 0.8)
            )
            f[win] = f[win] * 0.35 + np.array([40, 60, 85], np.float32) * 0.65
            f[zb > hb - 0.5] *= 0.8  # roof edge / parapet
            col[b] = f
        t = c == TREE
        if t.any():
            leaf = 0.7 + 0.5 * _unit(_hash(gi[t], gj[t], (z[t] * 2).astype(np.int64)), 1)
            col[t] = np.array([55, 95, 45], np.float32) * leaf[:, None]
            trunk = t.copy()
            trunk[t] = z[t] < 1.8
            col[trunk] = col[trunk] * 0.55 + np.array([70, 60, 40], np.float32) * 0.45  # shaded understorey
        fog = (1 - np.exp(-d / haze_m))[..., None]
        col = col * (1 - fog) + haze * fog
        col = np.where(ins[..., None], col, haze)
        col = np.where(is_sky[..., None], sky[None, :, None, :], col)
        out[a : a + n] = np.clip(col + 0.5, 0, 255).astype(np.uint8)
    return out


# ------------------------------------------------------------------------------- geography


def pixels_to_gps(xy: np.ndarray, size: int, mpp: float, origin: tuple[float, float]) -> np.ndarray:
    """Pixel ``(x, y)`` -> ``(lat, lon)`` degrees: the map centre sits at ``origin``, north up,
    a local equirectangular projection (exact to well under 0.1 % over a few kilometres)."""
    lat0, lon0 = origin
    east = (xy[:, 0] - size / 2) * mpp
    north = (size / 2 - xy[:, 1]) * mpp
    lat = lat0 + np.degrees(north / EARTH_RADIUS_M)
    lon = lon0 + np.degrees(east / (EARTH_RADIUS_M * np.cos(np.radians(lat0))))
    return np.c_[lat, lon]
