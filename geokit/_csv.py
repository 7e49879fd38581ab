"""One reader for the CSV files users write (reference lists, the ``pairs`` dataset).

Checked before any row is used: the file's size (bounded, so a wrong path to a huge file is a
clear error, not a long wait for memory), UTF-8 text, the header's columns, and lat/lon given
both or neither. Every error is one paragraph naming the file and, for rows, the line.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from geokit.errors import GeokitError

__all__ = ["MAX_CSV_BYTES", "CsvTable", "decode_text", "parse_coordinate", "read_csv"]

MAX_CSV_BYTES = 2 * 2**30  # ~20 million rows of a reference list; read whole into memory


@dataclass
class CsvTable:
    """A parsed CSV: its header (stripped) and its rows with the line each ends on."""

    path: Path
    fields: list[str]
    rows: list[tuple[int, dict[str, str]]]
    has_latlon: bool  # both lat and lon columns are present


def decode_text(data: bytes, where: str) -> str:
    """``data`` as UTF-8 text (a byte-order mark is dropped); otherwise an error naming ``where``
    and the line of the first bad byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise GeokitError(
            f"{where} line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start}); save the file as UTF-8 (from a spreadsheet: 'CSV UTF-8')"
        ) from None


def _decoded(path: Path, max_bytes: int) -> str:
    """The file as text; too big or not UTF-8 is an error naming the file (and line)."""
    size = path.stat().st_size
    if size > max_bytes:
        raise GeokitError(
            f"{path}: {size:,} bytes is more than a CSV geokit reads ({max_bytes:,} bytes); "
            "check that this is the list you meant, or split it"
        )
    return decode_text(path.read_bytes(), str(path))


def read_csv(path: str | Path, required: Sequence[str], *, header: str, max_bytes: int | None = None) -> CsvTable:
    """Read ``path`` (UTF-8, a header row naming at least ``required``; ``header`` says in the
    error what the header must name, e.g. ``"path,lat,lon"``). Columns ``lat`` and ``lon`` come
    both or neither. Rows are returned as read; checking their values is the caller's. Files over
    ``max_bytes`` (default :data:`MAX_CSV_BYTES`) are refused.

    :raises GeokitError: the file is missing, too big, not UTF-8, lacks a column, or has only
        one of lat/lon."""
    path = Path(path)
    if not path.is_file():
        raise GeokitError(f"{path}: not found (expected a CSV with a header row naming {header})")
    with io.StringIO(_decoded(path, MAX_CSV_BYTES if max_bytes is None else max_bytes), newline="") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip() for f in (reader.fieldnames or [])]
        reader.fieldnames = fields
        for col in required:
            if col not in fields:
                raise GeokitError(
                    f"{path}: missing column '{col}' (found: {', '.join(fields) or 'nothing'}); "
                    f"the header must name {header}"
                )
        if ("lat" in fields) != ("lon" in fields):
            raise GeokitError(f"{path}: has only one of the columns lat/lon; give both or neither")
        rows = [(reader.line_num, row) for row in reader]  # the line each row ends on
    return CsvTable(path, fields, rows, "lat" in fields)


def parse_coordinate(raw: str | None, name: str, bound: float) -> float:
    """``raw`` as a finite number within ``[-bound, bound]`` (degrees of ``name``, lat or lon).

    :raises ValueError: with the message the caller puts after the file and line."""
    try:
        value = float((raw or "").strip())
    except ValueError:
        raise ValueError(f"{name} {(raw or '')[:40]!r} is not a number") from None
    if not math.isfinite(value) or abs(value) > bound:
        raise ValueError(f"{name} {value} is outside [-{bound:g}, {bound:g}]")
    return value
