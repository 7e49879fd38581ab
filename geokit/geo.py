"""Distances on the Earth (a sphere of mean radius), shared by metrics, samplers and locate."""

from __future__ import annotations

from typing import Any

import numpy as np

EARTH_RADIUS_M = 6_371_008.8  # IUGG mean Earth radius


def haversine_m(lat1: Any, lon1: Any, lat2: Any, lon2: Any) -> Any:
    """Great-circle distance in metres between points in degrees (numpy broadcasting)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0, 1)))


def distance_m(a: Any, b: Any) -> Any:
    """:func:`haversine_m` between ``(..., 2)`` arrays of ``(lat, lon)`` rows in degrees."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return haversine_m(a[..., 0], a[..., 1], b[..., 0], b[..., 1])
