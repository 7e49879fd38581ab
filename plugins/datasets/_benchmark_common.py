"""Shared plumbing of the four benchmark dataset plugins (CVUSA, CVACT, VIGOR, University-1652).

Every benchmark reads its files exactly as released, checks every row and every referenced image
once (one directory listing per folder, so it stays fast on 100k-image folders), and reports
problems through :func:`geokit.verify.problem`: an error naming the file and line when loading,
or a collected entry (the row is skipped) under ``geokit datasets verify``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from geokit.augment import Geometry, PairAugment
from geokit.data import CrossViewDataset, decode_text
from geokit.errors import GeokitError
from geokit.images import IMAGE_SUFFIXES
from geokit.problems import problem


class BenchmarkOptions(BaseModel):
    """Options every benchmark takes (``root``, the two view sizes, augmentation, file checks)."""

    model_config = ConfigDict(extra="forbid")

    root: Path = Field(..., description="the dataset folder, as released")
    query_size: tuple[PositiveInt, PositiveInt] = Field((384, 384), description="[height, width] of queries")
    reference_size: tuple[PositiveInt, PositiveInt] = Field(
        (384, 384), description="[height, width] of references (satellite tiles)"
    )
    augment: bool = Field(True, description="Sample4Geo training augmentation (pair-consistent)")
    dropout_geometry: Literal["released", "relative"] = Field(
        "released",
        description="released: CoarseDropout holes sized from the image height and GridDropout "
        "at a fixed offset, as albumentations 1.x in the released code; relative: hole width from the image "
        "width, random grid offsets (geokit's earlier albumentations 2.0 defaults; FIDELITY.md)",
    )
    check_files: bool = Field(
        True, description="check that every listed image exists when loading (one directory listing per folder)"
    )
    skip_missing: bool = Field(
        False,
        description="skip pairs whose image is missing (a warning) "
        "instead of stopping; the original CVACT loader skipped silently",
    )
    allow_outside_root: bool = Field(
        False,
        description="accept listed image paths that are absolute or "
        "climb out of root with '..' (refused by default: paths stay in root)",
    )


class FileIndex:
    """Existence checks through cached directory listings (one ``listdir`` per folder)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._dirs: dict[str, frozenset[str] | None] = {}

    def listing(self, folder: str) -> frozenset[str] | None:
        names = self._dirs.get(folder, ())
        if names == ():
            try:
                names = frozenset(os.listdir(folder))
            except (FileNotFoundError, NotADirectoryError):
                names = None
            self._dirs[folder] = names
        return names  # type: ignore[return-value]

    def exists(self, path: str) -> bool:
        if not self.enabled:
            return True
        folder, name = os.path.split(path)
        names = self.listing(folder)
        return names is not None and name in names

    def why_missing(self, path: str) -> str:
        folder = os.path.dirname(path)
        return f" (the folder {folder} does not exist)" if self.listing(folder) is None else ""


class BenchmarkDataset(CrossViewDataset):
    """Base of the benchmark plugins: root check, file index, image sources, augmentation."""

    layout: str = ""
    options_model: type[BenchmarkOptions] = BenchmarkOptions
    geometry: Geometry = "panorama"
    dropout_ratios: tuple[float, float] = (0.5, 0.4)  # GridDropout ratio of (query, reference), as released

    def __init__(self, options: BenchmarkOptions):
        self.options = options
        self.root = Path(options.root).expanduser()
        if not self.root.is_dir():
            raise GeokitError(f"dataset.root: folder not found: {self.root}. {self.name} expects:\n{self.layout}")
        self.query_size = options.query_size  # a tuple already (pydantic)
        self.reference_size = options.reference_size
        self.files = FileIndex(options.check_files)
        self._sources: dict[str, str] = {}
        self._cache: dict[str, Any] = {}
        self._augment = (
            PairAugment(
                geometry=self.geometry,
                query_dropout_ratio=self.dropout_ratios[0],
                reference_dropout_ratio=self.dropout_ratios[1],
                dropout_geometry=options.dropout_geometry,
            )
            if options.augment
            else None
        )

    # -- helpers for subclasses -------------------------------------------------------------

    def require_file(self, rel: str, what: str) -> Path:
        """The file ``root/rel`` or an error saying what it is and the expected layout."""
        path = self.root / rel
        if not path.is_file():
            raise GeokitError(
                f"{self.name}: {rel} ({what}) not found in {self.root}.{self.suggest_root(rel)} "
                f"Expected layout:\n{self.layout}"
            )
        return path

    def suggest_root(self, rel: str) -> str:
        """' Did you mean dataset.root=X?' when ``rel`` sits one folder below or above the root
        (an archive extracted into a folder of its own name, or the root one level too deep)."""
        try:
            below = [d for d in sorted(self.root.iterdir()) if d.is_dir() and (d / rel).exists()]
        except OSError:
            below = []
        above = [self.root.parent] if (self.root.parent / rel).exists() else []
        found = below[:1] or above
        return f" Did you mean dataset.root={found[0]}?" if found else ""

    def image_ok(self, path: str, file: Any, line: int | str | None) -> bool:
        """Whether an image listed at ``file``/``line`` exists; reports it when not.

        Records where the image is listed, for ``verify``'s decode errors."""
        file = str(file)  # callers pass root-relative names
        if path not in self._sources:
            self._sources[path] = _where(file, line)
        if not self.options.allow_outside_root and not self.inside_root(path):
            problem(
                f"path {str(path)[:200]} is absolute or leaves the dataset root {self.root}; listed paths "
                "are relative to the root (set dataset.allow_outside_root=true to accept it)",
                file=file,
                line=line,
                category="path outside root",
                path=path,
            )
            return False
        if self.files.exists(path):
            return True
        problem(
            f"image not found: {path}{self.files.why_missing(path)}",
            file=file,
            line=line,
            category="missing image",
            path=path,
            warning=self.options.skip_missing,
        )
        return False

    def inside_root(self, path: str | Path) -> bool:
        """Whether ``path`` lies in the dataset root (lexically: '..' and absolute paths that
        lead elsewhere do not; symbolic links inside the root are followed as usual)."""
        if not hasattr(self, "_root_prefix"):
            self._root_prefix = os.path.abspath(self.root).rstrip(os.sep) + os.sep
        return os.path.abspath(path).startswith(self._root_prefix)

    def cached(self, key: str, build: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    # -- CrossViewDataset / verify extras ------------------------------------------------------

    def source_of(self, path: str) -> str | None:
        """Where an image is listed (file and line), for ``geokit datasets verify``."""
        return self._sources.get(str(path))

    def known_sizes(self) -> dict[str, int]:
        """Sizes of the full public dataset (``geokit datasets verify`` compares)."""
        return {}

    def augment_pair(
        self, query: np.ndarray, reference: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        return self._augment(query, reference, rng) if self._augment else (query, reference)


def _where(file: str, line: int | str | None) -> str:
    if line is None:
        return file
    return f"{file} line {line}" if isinstance(line, int) else f"{file} {line}"


def read_text_lines(path: Path, display: str) -> list[tuple[int, str]]:
    """Non-blank lines with their 1-based numbers; errors name the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise GeokitError(f"{display}: cannot read: {exc.strerror}") from None
    text = decode_text(data, display)
    lines = io.StringIO(text, newline=None)  # the line breaks open() would see (\n, \r\n, \r)
    return [(n, s.strip()) for n, s in enumerate(lines, start=1) if s.strip()]


def parse_float(raw: str, what: str, file: str, line: int | str, bound: float | None = None) -> float | None:
    """A float, or None after reporting the problem."""
    try:
        value = float(raw)
    except ValueError:
        problem(f"{what} {raw!r} is not a number", file=file, line=line, category="malformed row")
        return None
    if not np.isfinite(value) or (bound is not None and abs(value) > bound):
        problem(
            f"{what} {value} is outside [-{bound:g}, {bound:g}]" if bound else f"{what} is not finite",
            file=file,
            line=line,
            category="malformed row",
        )
        return None
    return value


def list_images(folder: Path) -> list[str]:
    """Image files of a folder, sorted by name (hidden files ignored)."""
    with os.scandir(folder) as it:
        return sorted(
            e.path
            for e in it
            if e.is_file() and not e.name.startswith(".") and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES
        )
