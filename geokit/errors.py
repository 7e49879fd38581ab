"""The one exception type users see.

Everything that is the user's to fix (a config key, a file, a plugin) raises `GeokitError` with a
message that names the file, line or key. The CLI prints it as one paragraph, without a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class GeokitError(Exception):
    """A problem the user can fix; the message says what and where."""


def closest(name: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' for the nearest choice, or '' when nothing is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""
