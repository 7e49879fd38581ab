"""geokit: a plugin-based toolkit for cross-view geo-localisation.

Importing geokit is cheap (no torch): the engines are imported where they are used.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from geokit.errors import GeokitError
from geokit.hookspecs import hookimpl

__all__ = ["GeokitError", "Localizer", "__version__", "hookimpl"]


def __getattr__(name: str) -> Any:
    # `from geokit import Localizer` without paying for torch at `import geokit`.
    if name == "Localizer":
        from geokit.retrieval.locate import Localizer

        return Localizer
    raise AttributeError(f"module 'geokit' has no attribute {name!r}")
