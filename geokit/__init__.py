"""geokit: a plugin-based toolkit for cross-view geo-localisation.

Importing geokit is cheap (no torch): the engines are imported where they are used.
"""
from __future__ import annotations

__version__ = "0.1.0"

from geokit.errors import GeokitError  # noqa: E402
from geokit.hookspecs import hookimpl  # noqa: E402

__all__ = ["GeokitError", "__version__", "hookimpl"]
