"""Kept so that ``import geokit.locate`` keeps working: the code lives in :mod:`geokit.retrieval.locate`."""

from geokit.retrieval.locate import (
    Candidate,
    Consensus,
    Localizer,
    Location,
    consensus,
    contact_sheet,
    format_results,
)

__all__ = [
    "Candidate",
    "Consensus",
    "Localizer",
    "Location",
    "consensus",
    "contact_sheet",
    "format_results",
]
