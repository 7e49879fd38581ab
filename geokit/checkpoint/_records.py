"""Checkpoint records: the JSON a weights file carries (what its weights mean), read and checked."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geokit.errors import GeokitError

RECORD_KEY = "geokit"  # the safetensors metadata key of the record
# The parts of a record that decide what an embedding means (an index keeps them).
RECORD_KEYS = ("encoder", "embedding_dim", "mean", "std", "query_size", "reference_size")


def read_record(path: str | Path) -> dict[str, Any]:
    """The JSON record of a geokit weights file (without loading the tensors)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise GeokitError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one error
        raise GeokitError(
            f"{path} is not a readable safetensors file ({exc}); a geokit checkpoint "
            "is a .safetensors file written by 'geokit train'"
        ) from None
    if RECORD_KEY not in meta:
        raise GeokitError(f"{path} has no geokit record in its metadata: not a geokit checkpoint")
    try:
        record = json.loads(meta[RECORD_KEY])
    except (ValueError, RecursionError) as exc:
        raise GeokitError(f"{path}: the geokit record is not valid JSON ({str(exc)[:200]})") from None
    if not isinstance(record, dict):
        raise GeokitError(f"{path}: the geokit record is not a JSON object")
    validate_record(record, str(path))
    return record


# A record is read from a file that may come from anyone: what it says is checked against these
# bounds before anything is allocated from it (a 12000x12000 input size would cost gigabytes per
# image; std 0 would divide by zero and score NaN).
MAX_INPUT_SIDE = 4096
MAX_EMBEDDING_DIM = 65536


def validate_record(record: Mapping[str, Any], source: str) -> None:
    """Check the keys of a checkpoint record that decide sizes and arithmetic (those present):
    ``query_size``/``reference_size`` two integers in [1, MAX_INPUT_SIDE]; ``mean``/``std``
    three finite numbers (std > 0), or one such triple per view; ``embedding_dim`` an integer in [1, MAX_EMBEDDING_DIM];
    ``encoder`` a mapping with a name. One paragraph naming the key on failure."""
    from geokit.registry import short_repr

    def bad(key: str, want: str) -> GeokitError:
        return GeokitError(
            f"{source}: the checkpoint record's '{key}' is {short_repr(record[key])}; "
            f"expected {want}. The file is damaged or was not written by geokit."
        )

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_num(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)

    v: Any  # a record's values are whatever the JSON held
    for key in ("query_size", "reference_size"):
        v = record.get(key)
        if key in record and not (
            isinstance(v, (list, tuple)) and len(v) == 2 and all(is_int(x) and 1 <= x <= MAX_INPUT_SIDE for x in v)
        ):
            raise bad(key, f"[height, width], each an integer from 1 to {MAX_INPUT_SIDE}")

    def triple(v: Any, positive: bool) -> bool:
        return (
            isinstance(v, (list, tuple))
            and len(v) == 3
            and all(is_num(x) and abs(x) <= 1e3 and (x > 1e-6 if positive else True) for x in v)
        )

    for key, positive in (("mean", False), ("std", True)):
        v = record.get(key)
        per_view = isinstance(v, Mapping) and set(v) == {"query", "reference"}
        if key in record and not (triple(v, positive) or (per_view and all(triple(x, positive) for x in v.values()))):
            raise bad(
                key,
                "three finite numbers"
                + (" greater than 0" if positive else "")
                + ", or {'query': [...], 'reference': [...]} of them",
            )
    v = record.get("embedding_dim")
    if "embedding_dim" in record and not (is_int(v) and 1 <= v <= MAX_EMBEDDING_DIM):
        raise bad("embedding_dim", f"an integer from 1 to {MAX_EMBEDDING_DIM}")
    v = record.get("encoder")
    if "encoder" in record and not (isinstance(v, Mapping) and isinstance(v.get("name"), str)):
        raise bad("encoder", "the encoder's config section (a mapping with a 'name')")


RECORD_FORMAT = 1
VIEWS = ("query", "reference")


def norm_record(value: Sequence[float] | Mapping[str, Sequence[float]]) -> Any:
    """mean/std as JSON: a list, or a per-view mapping of lists."""
    if isinstance(value, Mapping):
        return {v: [float(x) for x in value[v]] for v in VIEWS}
    return [float(x) for x in value]


def model_record(config: Mapping[str, Any], encoder: Any, dataset: Any, **extra: Any) -> dict[str, Any]:
    """The checkpoint record of a model built from ``config`` (its dict): what a user needs to use
    its weights without the run."""
    from geokit.runtime import versions

    return {
        "format": RECORD_FORMAT,
        "encoder": config["encoder"],
        "loss": config["loss"],
        "dataset": config["dataset"]["name"],
        "embedding_dim": int(encoder.embedding_dim),
        "mean": norm_record(encoder.mean),
        "std": norm_record(encoder.std),
        "query_size": list(dataset.query_size),
        "reference_size": list(dataset.reference_size),
        "query_view": dataset.query_view,
        "reference_view": dataset.reference_view,
        "versions": versions(),
        "config": config,
        **extra,
    }
