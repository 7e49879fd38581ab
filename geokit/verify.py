"""Check a dataset on disk before anyone spends an hour training: ``geokit datasets verify``.

Works for any dataset plugin through its :class:`~geokit.data.TrainSet` and
:class:`~geokit.data.EvalSet`: every split the dataset declares is loaded, every referenced image
must exist, a sample of them (or all, ``full=True``) must decode, and every query must have a
true reference. Datasets may offer optional extras (duck-typed, all optional):

- ``known_sizes() -> dict[str, int]``: the sizes of the full public dataset, with keys such as
  ``"train pairs"``, ``"train references"``, ``"<split> queries"``, ``"<split> references"``;
  differences are reported as warnings (a subset is fine, but not comparable to the paper);
- ``source_of(path) -> str | None``: where an image is listed ("splits/x.csv line 12"), so a
  decode failure names the line that references it;
- ``view_of(path) -> str``: the view an image belongs to, when training and evaluation put
  different views on one side (University-1652 satellite -> drone);
- ``layout`` (class attribute, str): the expected folder layout, shown when the root is wrong.

The load-time problem channel the loaders report through (:func:`~geokit.problems.problem`,
:func:`~geokit.problems.collecting`) lives in :mod:`geokit.problems`; its names are re-exported
here, where plugins written before the split import them from.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geokit.errors import GeokitError
from geokit.problems import Problem, Problems, Severity, collecting, collecting_active, problem

__all__ = [
    "Problem",
    "Problems",
    "Report",
    "Severity",
    "collecting",
    "collecting_active",
    "decode_check",
    "problem",
    "suspicious_data",
    "verify_dataset",
]


# --------------------------------------------------------------------------------- report


@dataclass
class Report:
    """What ``verify`` found: counts per part, checked images, problems."""

    dataset: str
    counts: dict[str, int] = field(default_factory=dict)
    known: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    images_listed: int = 0
    images_decoded: int = 0
    full: bool = False
    image_sizes: dict[str, Counter] = field(default_factory=dict)
    problems: Problems = field(default_factory=Problems)

    @property
    def ok(self) -> bool:
        return not self.problems.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "ok": self.ok,
            "counts": self.counts,
            "known_sizes": self.known,
            "images_listed": self.images_listed,
            "images_decoded": self.images_decoded,
            "image_sizes": {v: {f"{w}x{h}": n for (w, h), n in c.most_common()} for v, c in self.image_sizes.items()},
            "notes": self.notes,
            "problems": [
                {
                    "severity": p.severity,
                    "category": p.category,
                    "file": p.file,
                    "line": p.line,
                    "message": p.message,
                    "path": p.path,
                }
                for p in self.problems
            ],
        }

    def render(self, max_per_group: int = 10) -> str:
        """A human summary: counts, image sizes, then problems grouped and truncated."""
        out = [f"dataset '{self.dataset}'"]
        width = max((len(k) for k in self.counts), default=0)
        for key, n in self.counts.items():
            ref = self.known.get(key)
            tail = (
                ""
                if ref is None
                else ("  (matches the full dataset)" if ref == n else f"  (the full dataset has {ref:,})")
            )
            out.append(f"  {key:<{width}}  {n:>9,}{tail}")
        if self.images_listed:
            how = "all" if self.full else "a random sample; --full decodes all"
            out.append(
                f"  images listed {self.images_listed:,}, all checked to exist; {self.images_decoded:,} decoded ({how})"
            )
        for view, sizes in self.image_sizes.items():
            common = ", ".join(f"{w}x{h} ({n:,})" for (w, h), n in sizes.most_common(3))
            more = f", {len(sizes) - 3} other sizes" if len(sizes) > 3 else ""
            out.append(f"  {view} image sizes (W x H) among decoded: {common}{more}")
        out.extend(f"  note: {n}" for n in self.notes)
        for severity in ("error", "warning"):
            group = [p for p in self.problems if p.severity == severity]
            if not group:
                continue
            out.append("")
            out.append(f"{len(group):,} {severity}{'s' if len(group) != 1 else ''}:")
            out.extend(_render_group(group, max_per_group))
        out.append("")
        n_err, n_warn = len(self.problems.errors), len(self.problems.warnings)
        if n_err:
            out.append(
                f"FAILED: {n_err:,} error{'s' if n_err != 1 else ''}, {n_warn:,} "
                f"warning{'s' if n_warn != 1 else ''}. Fix the errors above before training."
            )
        else:
            out.append(f"OK: the layout is usable ({n_warn:,} warning{'s' if n_warn != 1 else ''}).")
        return "\n".join(out)


def _render_group(problems: list[Problem], limit: int) -> list[str]:
    lines: list[str] = []
    by_cat: dict[str, list[Problem]] = defaultdict(list)
    for p in problems:
        by_cat[p.category].append(p)
    for cat, items in by_cat.items():
        if cat == "missing image" and len(items) > 1:
            lines.extend(_missing_by_folder(items))
        lines.append(f"  [{cat}] {len(items):,}" if len(items) > 1 else f"  [{cat}]")
        for p in items[:limit]:
            lines.append("    " + str(p).replace("\n", "\n      "))
        if len(items) > limit:
            lines.append(f"    ... and {len(items) - limit:,} more like this")
    return lines


def _missing_by_folder(items: list[Problem]) -> list[str]:
    """Many missing images usually mean a folder was not extracted or sits elsewhere."""
    folders = Counter(os.path.dirname(p.path) for p in items if p.path)
    lines = []
    for folder, n in folders.most_common(5):
        if n < 2:
            break
        state = (
            "does not exist: not extracted, or the root points elsewhere?"
            if not os.path.isdir(folder)
            else "exists but lacks them: an incomplete download or extraction?"
        )
        lines.append(f"  hint: {n:,} missing images are in {folder} (the folder {state})")
    return lines


# --------------------------------------------------------------------------------- verify


def verify_dataset(
    ds: Any,
    *,
    sample: int = 200,
    full: bool = False,
    seed: int = 0,
    workers: int | None = None,
    name: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Verify a built dataset (a :class:`~geokit.data.CrossViewDataset`); never raises for
    problems in the data, it reports them.

    :param sample: how many images to decode (seeded random sample); ignored with ``full``.
    :param full: decode every image.
    :param name: the dataset's registered name, for the report (default: ``ds.name``).
    """
    report = Report(str(name or getattr(ds, "name", type(ds).__name__)))
    probs = report.problems
    paths: dict[str, str] = {}
    q_view = getattr(ds, "query_view", "query")
    r_view = getattr(ds, "reference_view", "reference")

    view_of = getattr(ds, "view_of", None)  # optional: datasets whose paths mix views per side

    def note_paths(items: Sequence[str], view: str) -> None:
        for p in items:
            paths.setdefault(str(p), view_of(str(p)) if callable(view_of) else view)

    with collecting(probs):
        try:
            tr = ds.train_set()
        except GeokitError as exc:
            probs.add(Problem("error", str(exc), category="train set"))
            tr = None
        if tr is not None:
            report.counts["train pairs"] = len(tr)
            report.counts["train references"] = len(tr.reference_paths)
            if len(tr) == 0:
                probs.add(Problem("error", "the training set is empty", category="train set"))
            if not tr.has_gps:
                report.notes.append(
                    "the training set has no GPS: the 'gps' sampler cannot be used ('dss' warm-starts with 'random')"
                )
            note_paths(tr.query_paths, q_view)
            note_paths(tr.reference_paths, r_view)
        eval_sets = []
        for split in getattr(ds, "splits", ("test",)):
            try:
                es = ds.eval_set(split)
            except GeokitError as exc:
                probs.add(Problem("error", str(exc), category=f"{split} set"))
                continue
            eval_sets.append(es)
            report.counts[f"{split} queries"] = len(es.query_paths)
            report.counts[f"{split} references"] = len(es.reference_paths)
            if len(es.query_paths) == 0 or len(es.reference_paths) == 0:
                probs.add(
                    Problem("error", f"the {split} split has no queries or no references", category=f"{split} set")
                )
                continue
            try:
                es.positives()
            except GeokitError as exc:
                probs.add(Problem("error", str(exc), category=f"{split} set"))
            note_paths(es.query_paths, q_view)
            note_paths(es.reference_paths, r_view)

        if not any(p.category == "suspicious data" for p in probs):  # the loader may report them itself
            for p in suspicious_data(tr, eval_sets):
                probs.add(p)

    known_fn = getattr(ds, "known_sizes", None)
    report.known = dict(known_fn()) if callable(known_fn) else {}
    mismatched = [k for k, n in report.known.items() if report.counts.get(k) and report.counts[k] != n]
    nearly = [k for k in mismatched if 0.9 * report.known[k] <= report.counts[k] < report.known[k]]
    extra = [k for k in mismatched if report.counts[k] > report.known[k]]
    for k in nearly:  # most of the full set is there: probably an incomplete download or extraction
        probs.add(
            Problem(
                "warning",
                f"{k}: {report.counts[k]:,} of the published {report.known[k]:,} "
                f"({report.known[k] - report.counts[k]:,} missing): an incomplete download or "
                "extraction? Metrics will not be exactly comparable with published numbers",
                category="size",
            )
        )
    for k in extra:
        probs.add(
            Problem(
                "warning",
                f"{k}: {report.counts[k]:,}, more than the published "
                f"{report.known[k]:,}: extra files, or another version of the dataset?",
                category="size",
            )
        )
    rest = [k for k in mismatched if k not in nearly and k not in extra]
    if rest:
        probs.add(
            Problem(
                "warning",
                f"not the full dataset ({', '.join(rest)} differ from the "
                "published sizes, see above): fine for a subset, but metrics will not be "
                "comparable with published numbers",
                category="size",
            )
        )

    source_of = getattr(ds, "source_of", None)

    def where(path: str) -> str | None:
        return source_of(path) if callable(source_of) else None

    all_paths = list(paths)
    report.images_listed = len(all_paths)
    missing = [p for p in all_paths if not os.path.isfile(p)]
    for m in missing:
        probs.add(Problem("error", f"image not found: {m}", where(m), None, "missing image", m))
    gone = set(missing)
    present = [p for p in all_paths if p not in gone] if gone else all_paths
    if full:
        chosen = present
    else:
        rng = np.random.default_rng(seed)
        n_pick = min(sample, len(present))
        chosen = [present[i] for i in sorted(rng.choice(len(present), size=n_pick, replace=False))] if n_pick else []
    sizes: dict[str, Counter] = defaultdict(Counter)
    for i, (path, result) in enumerate(_decode_all(chosen, workers)):
        if isinstance(result, str):
            probs.add(Problem("error", f"cannot decode image {path}: {result}", where(path), None, "bad image", path))
        else:
            sizes[paths[path]][result] += 1
        if on_progress is not None:
            on_progress(i + 1, len(chosen))
    report.images_decoded = len(chosen)
    report.full = full or len(chosen) == len(present)
    report.image_sizes = dict(sizes)
    return report


def suspicious_data(train: Any, eval_sets: Sequence[Any]) -> list[Problem]:
    """Legal but suspicious data, as warnings: duplicated training pairs, a query that is its own
    reference, many evaluation queries sharing one reference."""
    out: list[Problem] = []
    if train is not None and len(train):
        refs = np.asarray(train.pair_reference)
        q = list(train.query_paths)
        pairs = Counter(zip(q, refs.tolist()))
        dup = sum(n - 1 for n in pairs.values() if n > 1)
        if dup:
            example = next(k for k, n in pairs.items() if n > 1)[0]
            out.append(
                Problem(
                    "warning",
                    f"{dup:,} training pairs repeat another pair (same query and "
                    f"reference, e.g. {example}): they count twice",
                    category="suspicious data",
                )
            )
        same = [i for i in range(len(q)) if q[i] == train.reference_paths[refs[i]]]
        if same:
            out.append(
                Problem(
                    "warning",
                    f"{len(same):,} training pairs have the query image as their "
                    f"reference (e.g. {q[same[0]]}): a trivial match",
                    category="suspicious data",
                )
            )
    for es in eval_sets:
        labels = np.asarray(es.query_labels)
        if len(labels) >= 10 and labels.ndim == 1:
            counts = np.unique(labels, return_counts=True)[1]
            if counts.max() >= max(10, len(labels) // 10):
                out.append(
                    Problem(
                        "warning",
                        f"{int(counts.max()):,} of the {len(labels):,} {es.name} queries "
                        "share one reference: recall says little about them; is that intended?",
                        category="suspicious data",
                    )
                )
    return out


def decode_check(path: str) -> tuple[int, int] | str:
    """Fully decode one image with the loader training uses (:mod:`geokit.images`: pixel limit,
    16-bit and other modes, EXIF orientation); its (width, height), or the reason it failed."""
    from geokit.images import ImageError, load_image

    try:
        img = load_image(path, None)
        return int(img.shape[1]), int(img.shape[0])
    except ImageError as exc:
        return exc.reason
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the finding
        return f"{type(exc).__name__}: {exc}"


def _decode_all(paths: list[str], workers: int | None) -> Iterator[tuple[str, tuple[int, int] | str]]:
    if len(paths) < 64:
        for p in paths:
            yield p, decode_check(p)
        return
    from concurrent.futures import ThreadPoolExecutor

    # OpenCV and Pillow release the GIL while decoding, so threads scale on the decoders.
    n = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=n) as pool:
        yield from zip(paths, pool.map(decode_check, paths, chunksize=16))
