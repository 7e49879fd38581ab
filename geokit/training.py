"""The training engine's public import path; the implementation lives in :mod:`geokit.engine`.

``from geokit.training import train, TrainStep, ...`` keeps working: every public name of
:mod:`geokit.engine` is re-exported here.
"""

from geokit.engine import *  # noqa: F403 - the facade re-exports exactly geokit.engine.__all__
from geokit.engine import __all__ as __all__
