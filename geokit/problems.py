"""The load-time problem channel: how dataset loaders report a bad row.

Loaders call :func:`problem` for each row-level problem (a missing column, a path outside the
root, an unparsable number). Normally that raises :class:`~geokit.errors.GeokitError` at the
first problem, naming the file and line; while :func:`collecting` is active (as
``geokit datasets verify`` does, see :mod:`geokit.verify`) problems are recorded instead and the
loader skips the row and carries on, so one run lists every problem instead of the first.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from geokit.errors import GeokitError

__all__ = ["Problem", "Problems", "Severity", "collecting", "collecting_active", "problem"]

log = logging.getLogger("geokit")
Severity = Literal["error", "warning"]


@dataclass
class Problem:
    """One thing wrong (or suspicious) in a dataset folder."""

    severity: Severity
    message: str
    file: str | None = None
    line: int | str | None = None
    category: str = "problem"
    path: str | None = None  # the image concerned, when there is one

    def where(self) -> str:
        if self.file is None:
            return ""
        if self.line is None:
            return str(self.file)
        return f"{self.file} line {self.line}" if isinstance(self.line, int) else f"{self.file} {self.line}"

    def __str__(self) -> str:
        where = self.where()
        return f"{where}: {self.message}" if where else self.message


@dataclass
class Problems:
    """The problems collected while verifying."""

    items: list[Problem] = field(default_factory=list)

    def add(self, p: Problem) -> None:
        # A missing file that every split needs is reported once, not once per split.
        if p.file is None and any(q.message == p.message for q in self.items):
            return
        self.items.append(p)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.items if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.items if p.severity == "warning"]

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Problem]:
        return iter(self.items)


_COLLECTOR: contextvars.ContextVar[Problems | None] = contextvars.ContextVar("geokit_verify", default=None)


def problem(
    message: str,
    *,
    file: Any = None,
    line: int | str | None = None,
    category: str = "problem",
    path: str | None = None,
    warning: bool = False,
) -> None:
    """Report a problem with a dataset on disk.

    Outside :func:`collecting`: an error raises :class:`GeokitError` naming the file and line, a
    warning is logged. Inside: it is recorded and the caller is expected to skip the item.
    """
    collector = _COLLECTOR.get()
    p = Problem("warning" if warning else "error", message, None if file is None else str(file), line, category, path)
    if collector is None:
        if warning:
            log.warning("%s", p)
            return
        raise GeokitError(str(p))
    collector.add(p)


def collecting_active() -> bool:
    """Whether problems are being collected (loaders may then skip rather than stop)."""
    return _COLLECTOR.get() is not None


@contextmanager
def collecting(problems: Problems) -> Iterator[Problems]:
    """Record :func:`problem` calls into ``problems`` instead of raising."""
    token = _COLLECTOR.set(problems)
    try:
        yield problems
    finally:
        _COLLECTOR.reset(token)
