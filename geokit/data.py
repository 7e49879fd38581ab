"""What a dataset gives the engines: training pairs and an evaluation protocol.

A dataset plugin returns a :class:`CrossViewDataset`. The engines only see these structures,
so a proprietary dataset is a subclass with two methods (or just a ``pairs`` CSV folder).
Image decoding, resizing and normalisation are done here, once, for every dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

# the one CSV reader, re-exported for dataset plugins
from geokit._csv import CsvTable as CsvTable
from geokit._csv import decode_text as decode_text
from geokit._csv import parse_coordinate as parse_coordinate
from geokit._csv import read_csv as read_csv
from geokit.errors import GeokitError

if TYPE_CHECKING:
    import torch

Size = tuple[int, int]  # (height, width)


@dataclass
class TrainSet:
    """Training pairs. Pair *i* is ``query_paths[i]`` with ``reference_paths[pair_reference[i]]``.

    :ivar reference_gps: ``(R, 2)`` float64 latitude/longitude in degrees per reference, or None.
    :ivar pair_conflicts: ``(N, S)`` int64 reference indices (−1 padded) that are
        near-positives of pair *i* besides its own reference (e.g. VIGOR semi-positives), or
        None. Samplers may keep them out of pair *i*'s batch; losses may receive them.
    :ivar columns: per-pair numeric data for the loss, ``name -> (N, ...)`` array (e.g. a
        pair weight); the loss receives the rows of its batch (see ``geokit_register_losses``).
    """

    query_paths: Sequence[str]
    reference_paths: Sequence[str]
    pair_reference: np.ndarray
    reference_gps: np.ndarray | None = None
    pair_conflicts: np.ndarray | None = None
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pair_reference = np.asarray(self.pair_reference, dtype=np.int64)
        if len(self.pair_reference) != len(self.query_paths):
            raise ValueError("pair_reference must have one entry per query")
        if len(self.pair_reference) and (
            self.pair_reference.min() < 0 or self.pair_reference.max() >= len(self.reference_paths)
        ):
            raise ValueError("pair_reference holds an index outside reference_paths")
        if self.reference_gps is not None:
            self.reference_gps = np.asarray(self.reference_gps, dtype=np.float64).reshape(-1, 2)
            if len(self.reference_gps) != len(self.reference_paths):
                raise ValueError("reference_gps must have one row per reference")
        if self.pair_conflicts is not None:
            self.pair_conflicts = np.asarray(self.pair_conflicts, dtype=np.int64).reshape(len(self), -1)
        cols = {}
        for name, values in dict(self.columns).items():
            arr = np.asarray(values)
            if arr.dtype.kind not in "biuf" or len(arr) != len(self):
                raise ValueError(
                    f"per-pair column {name!r} must be numeric with one row per pair "
                    f"(got dtype {arr.dtype}, {len(arr)} rows for {len(self)} pairs)"
                )
            cols[str(name)] = arr
        self.columns = cols

    def __len__(self) -> int:
        return len(self.query_paths)

    @property
    def has_gps(self) -> bool:
        return self.reference_gps is not None


@dataclass
class MatchTable:
    """True matches stated explicitly: entry *k* says reference ``reference[k]`` matches query
    ``query[k]``, with ``weight[k]`` (> 0; all 1 when not given). For protocols whose matches
    are not an equivalence of labels (several weighted positives per query, as in GTA-UAV,
    SUES-200 or DenseUAV style data)."""

    query: np.ndarray
    reference: np.ndarray
    weight: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.query = np.asarray(self.query, dtype=np.int64).ravel()
        self.reference = np.asarray(self.reference, dtype=np.int64).ravel()
        if len(self.query) != len(self.reference):
            raise ValueError("a MatchTable needs as many reference entries as query entries")
        if self.weight is not None:
            self.weight = np.asarray(self.weight, dtype=np.float64).ravel()
            if len(self.weight) != len(self.query):
                raise ValueError("a MatchTable needs one weight per entry")
            if len(self.weight) and not (self.weight > 0).all():
                raise ValueError("MatchTable weights must be > 0 (leave a non-match out of the table)")

    def lists(self, n_queries: int) -> list[np.ndarray]:
        """Per query, its matching reference indices (in table order)."""
        order = np.argsort(self.query, kind="stable")
        bounds = np.searchsorted(self.query[order], np.arange(n_queries + 1))
        return [self.reference[order[a:b]] for a, b in zip(bounds[:-1], bounds[1:])]

    def weights(self, n_queries: int) -> list[np.ndarray]:
        """Per query, the weights of :meth:`lists` (ones when the table has none)."""
        w = self.weight if self.weight is not None else np.ones(len(self.query))
        order = np.argsort(self.query, kind="stable")
        bounds = np.searchsorted(self.query[order], np.arange(n_queries + 1))
        return [w[order[a:b]] for a, b in zip(bounds[:-1], bounds[1:])]


@dataclass
class EvalSet:
    """An evaluation protocol: a reference is a true match of a query exactly when labels are
    equal, or, when ``matches`` is given, exactly when the table lists the pair.

    :ivar semi_positives: ``(Q, S)`` int64 reference indices (−1 padded) that count as near-hits
        (VIGOR), or None.
    :ivar multi_positive: report ``AP`` (several true references per query, University-1652).
    :ivar query_gps, reference_gps: ``(n, 2)`` latitude/longitude in degrees, when known.
    :ivar matches: an explicit :class:`MatchTable` (labels are then only informative).
    """

    query_paths: Sequence[str]
    reference_paths: Sequence[str]
    query_labels: np.ndarray
    reference_labels: np.ndarray
    semi_positives: np.ndarray | None = None
    multi_positive: bool = False
    query_gps: np.ndarray | None = None
    reference_gps: np.ndarray | None = None
    name: str = "test"
    matches: MatchTable | None = None

    def __post_init__(self) -> None:
        self.query_labels = np.asarray(self.query_labels, dtype=np.int64)
        self.reference_labels = np.asarray(self.reference_labels, dtype=np.int64)
        if len(self.query_labels) != len(self.query_paths):
            raise ValueError("query_labels must have one entry per query")
        if len(self.reference_labels) != len(self.reference_paths):
            raise ValueError("reference_labels must have one entry per reference")
        for attr in ("query_gps", "reference_gps"):
            gps = getattr(self, attr)
            if gps is not None:
                setattr(self, attr, np.asarray(gps, dtype=np.float64).reshape(-1, 2))
        if self.matches is not None:
            m = self.matches
            if len(m.query) and (
                m.query.min() < 0
                or m.query.max() >= len(self.query_paths)
                or m.reference.min() < 0
                or m.reference.max() >= len(self.reference_paths)
            ):
                raise ValueError("the match table holds an index outside the query or reference set")

    @property
    def has_gps(self) -> bool:
        """GPS known for both queries and references (metre-level metrics apply)."""
        return self.query_gps is not None and self.reference_gps is not None

    def positives(self) -> np.ndarray | list[np.ndarray]:
        """Per query, the indices of its true references (one array, or a list when multi)."""
        if self.matches is not None:
            lists = self.matches.lists(len(self.query_paths))
            self._check_matched([len(x) > 0 for x in lists])
            if not self.multi_positive and all(len(x) == 1 for x in lists):
                return np.asarray([x[0] for x in lists], dtype=np.int64)
            return lists
        order = np.argsort(self.reference_labels, kind="stable")
        sorted_labels = self.reference_labels[order]
        lo = np.searchsorted(sorted_labels, self.query_labels, side="left")
        hi = np.searchsorted(sorted_labels, self.query_labels, side="right")
        self._check_matched(hi > lo)
        if not self.multi_positive and np.all(hi - lo == 1):
            return order[lo]
        return [order[a:b] for a, b in zip(lo, hi)]

    def _check_matched(self, matched: Any) -> None:
        missing = np.flatnonzero(~np.asarray(matched, dtype=bool))
        if len(missing):
            i = int(missing[0])
            raise GeokitError(
                f"{len(missing)} {self.name} queries have no true reference in the gallery "
                f"(first: {self.query_paths[i]}, label {self.query_labels[i]})"
            )


class CrossViewDataset:
    """Base class for dataset plugins. Subclasses implement :meth:`train_set` and :meth:`eval_set`.

    :ivar query_size, reference_size: ``(height, width)`` every image of that view is resized to.
    :ivar query_view, reference_view: names of the views, for messages and plots.
    :ivar splits: the evaluation splits :meth:`eval_set` accepts; the last one is the default.
    """

    name: str = "dataset"
    query_size: Size = (224, 224)
    reference_size: Size = (224, 224)
    query_view: str = "ground"
    reference_view: str = "aerial"
    splits: tuple[str, ...] = ("test",)

    def train_set(self) -> TrainSet:
        raise NotImplementedError

    def eval_set(self, split: str | None = None) -> EvalSet:
        raise NotImplementedError

    def augment_pair(
        self, query: np.ndarray, reference: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Training augmentation of one pair (uint8 HWC arrays, already resized). Default: none."""
        return query, reference

    def load_image(self, path: str, size: Size) -> np.ndarray:
        """Decode ``path`` to RGB uint8 ``(H, W, 3)`` at ``size``. Errors name the file."""
        return load_image(path, size)

    def check_split(self, split: str | None) -> str:
        """``split`` or the default split, with a clear error for an unknown one."""
        if split is None:
            return self.splits[-1]
        if split not in self.splits:
            raise GeokitError(f"dataset '{self.name}' has no split '{split}'; splits: {', '.join(self.splits)}")
        return split


def load_image(path: str | Path, size: Size) -> np.ndarray:
    """Decode an image file to RGB uint8 at ``size`` (height, width).

    Decoder, resizing and pixel limit follow this process's image options (the config's
    ``images:`` section; :mod:`geokit.images`): by default OpenCV with ``INTER_LINEAR_EXACT``,
    the released Sample4Geo pixels. Errors are :class:`GeokitError` naming the file.
    """
    from geokit.images import load_image as _load

    return _load(path, size)


def to_tensor(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 HWC -> normalised float CHW (a table look-up, :func:`geokit.images.to_tensor`)."""
    from geokit.images import to_tensor as _to_tensor

    return _to_tensor(image, mean, std)


@dataclass
class Normalisation:
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


_VIEW_STREAM = {"query": 1, "reference": 2}  # separate random streams per view for transforms


def apply_transforms(
    image: np.ndarray, transforms: Sequence[Any], *, view: str, training: bool, rng: np.random.Generator
) -> np.ndarray:
    """Run the configured ``transforms`` components in order (see ``geokit_register_transforms``)."""
    for t in transforms:
        image = t(image, view=view, training=training, rng=rng)
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3):
            raise GeokitError(
                f"transform {type(t).__name__} returned {type(image).__name__} "
                f"{getattr(image, 'dtype', '')}, not a uint8 HWC array"
            )
    return image


def transformed_size(size: Size, transforms: Sequence[Any], view: str) -> Size:
    """The image size after ``transforms`` (those without ``output_size`` keep the size)."""
    for t in transforms:
        out = getattr(t, "output_size", None)
        if out is not None:
            size = tuple(int(x) for x in out(tuple(size), view))  # type: ignore[assignment]
    return size


@dataclass
class ImageList:
    """A torch-style dataset of images of one view (evaluation / embedding).

    ``transforms`` run in evaluation mode with a generator seeded from (``seed``, position),
    so a random choice (e.g. a field-of-view window) is the same on every run. ``offset`` is
    the position of ``paths[0]`` in the full list when this is one rank's share of it."""

    dataset: CrossViewDataset
    paths: Sequence[str]
    size: Size
    norm: Normalisation = field(default_factory=Normalisation)
    view: str = "query"
    transforms: Sequence[Any] = ()
    seed: int = 0
    offset: int = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        image = self.dataset.load_image(self.paths[i], self.size)
        if self.transforms:
            rng = np.random.default_rng([self.seed, self.offset + int(i), _VIEW_STREAM.get(self.view, 0)])
            image = apply_transforms(image, self.transforms, view=self.view, training=False, rng=rng)
        return to_tensor(image, self.norm.mean, self.norm.std)


@dataclass(frozen=True)
class BadPair:
    """Stands in for a training pair whose image could not be read (``PairList`` skip mode)."""

    index: int
    message: str


@dataclass
class PairList:
    """Training pairs with augmentation whose randomness is a function of (seed, epoch, index),
    so results do not depend on worker count or rank.

    An item is ``(query, reference, index)``: the pair index travels with the images, so the
    engine knows which pairs a batch holds whatever the workers did (per-pair data for the loss
    is looked up from it).

    :ivar bad_images: ``error`` raises the loader's :class:`GeokitError` (naming the file);
        ``skip`` returns a :class:`BadPair` instead, for the engine to drop and count (a
        marker rather than an exception, so the message stays clean across worker processes).
    :ivar reference_norm: the reference view's normalisation when it differs from ``norm``.
    :ivar transforms: ``transforms`` components, run after ``augment_pair`` in training mode.
    """

    dataset: CrossViewDataset
    train: TrainSet
    norm: Normalisation = field(default_factory=Normalisation)
    seed: int = 0
    epoch: int = 1
    bad_images: str = "error"
    reference_norm: Normalisation | None = None
    transforms: Sequence[Any] = ()

    def __len__(self) -> int:
        return len(self.train)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int] | BadPair:
        """Pair ``key``, or ``(epoch, index)``: an epoch carried with the index reaches
        persistent worker processes, whose copy of ``self.epoch`` would be stale."""
        epoch, i = key if isinstance(key, tuple) else (self.epoch, key)
        ds, tr = self.dataset, self.train
        try:
            q = ds.load_image(tr.query_paths[i], ds.query_size)
            r = ds.load_image(tr.reference_paths[tr.pair_reference[i]], ds.reference_size)
        except GeokitError as exc:
            if self.bad_images == "skip":
                return BadPair(int(i), str(exc))
            raise
        rng = np.random.default_rng([self.seed, int(epoch), int(i)])
        q, r = ds.augment_pair(q, r, rng)
        if self.transforms:
            key_ = [self.seed, int(epoch), int(i)]
            q = apply_transforms(
                q,
                self.transforms,
                view="query",
                training=True,
                rng=np.random.default_rng([*key_, _VIEW_STREAM["query"]]),
            )
            r = apply_transforms(
                r,
                self.transforms,
                view="reference",
                training=True,
                rng=np.random.default_rng([*key_, _VIEW_STREAM["reference"]]),
            )
        rn = self.reference_norm or self.norm
        return to_tensor(q, self.norm.mean, self.norm.std), to_tensor(r, rn.mean, rn.std), int(i)
