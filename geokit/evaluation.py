"""Kept so that ``import geokit.evaluation`` keeps working: the code lives in :mod:`geokit.engine.evaluation`."""

from geokit.engine.evaluation import *  # noqa: F403 - the facade re-exports exactly geokit.engine.evaluation.__all__
from geokit.engine.evaluation import __all__ as __all__
