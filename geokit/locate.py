"""Kept so that ``import geokit.locate`` keeps working: the code lives in :mod:`geokit.retrieval.locate`."""

from geokit.retrieval.locate import *  # noqa: F403 - the facade re-exports exactly geokit.retrieval.locate.__all__
from geokit.retrieval.locate import __all__ as __all__
