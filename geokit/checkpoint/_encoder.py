"""An encoder rebuilt from a checkpoint: its record, its weights, and what an index keeps of it."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geokit.checkpoint._files import load_module_strict, load_weights
from geokit.checkpoint._keys import strip_prefix
from geokit.checkpoint._records import RECORD_KEYS
from geokit.errors import GeokitError


def fingerprint(tensors: Mapping[str, Any]) -> str:
    """SHA-256 of encoder weights (names, shapes, dtypes and bytes), independent of file layout."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        arr = t.detach().cpu().contiguous().numpy() if hasattr(t, "detach") else np.ascontiguousarray(t)
        h.update(f"{name}:{arr.dtype}:{arr.shape};".encode())
        h.update(arr.data.cast("B"))
    return h.hexdigest()


@dataclass
class Encoder:
    """An encoder rebuilt from a checkpoint record, ready for :func:`geokit.embedding.embed_paths`."""

    module: Any
    record: dict[str, Any]
    fingerprint: str
    source: str

    def size(self, view: str) -> tuple[int, int]:
        if view not in ("query", "reference"):
            raise GeokitError(f"view must be 'query' or 'reference', not {view!r}")
        return tuple(self.record[f"{view}_size"])

    @property
    def norm(self) -> Any:
        """The query view's normalisation (see :meth:`norm_for`)."""
        return self.norm_for("query")

    def norm_for(self, view: str) -> Any:
        """The recorded normalisation of ``view`` (``mean``/``std`` lists, or per-view mappings)."""
        from geokit.data import Normalisation

        mean, std = self.record["mean"], self.record["std"]
        mean = mean[view] if isinstance(mean, dict) else mean
        std = std[view] if isinstance(std, dict) else std
        return Normalisation(tuple(mean), tuple(std))


def load_encoder(checkpoint: str | Path, device: Any = None) -> Encoder:
    """Rebuild the checkpoint's encoder from its record and load its weights strictly.

    Options that only choose initial weights are switched off (``model.without_initial_weights``),
    so rebuilding needs no network.
    """
    from geokit.model import BuildContext, build_component, without_initial_weights

    tensors, record = load_weights(checkpoint)
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing:
        raise GeokitError(
            f"{checkpoint}: the checkpoint record lacks {', '.join(missing)}; it was not written by 'geokit train'"
        )
    options = dict(record["encoder"])
    name = options.pop("name", None)
    if not name:
        raise GeokitError(f"{checkpoint}: the record's encoder has no name")
    context = BuildContext(
        "encoder",
        dataset_name=str(record.get("dataset", "dataset")),
        query_size=tuple(record["query_size"]),
        reference_size=tuple(record["reference_size"]),
    )
    module = build_component("encoder", name, without_initial_weights(options), context)
    enc = strip_prefix(tensors, "encoder.")
    load_module_strict(module, enc, f"{checkpoint} (encoder)")
    if device is not None:
        module.to(device)
    module.eval()
    from geokit.images import apply_record

    apply_record(record, str(checkpoint))  # decode images as the encoder was trained to see them
    return Encoder(module, record, fingerprint(enc), str(checkpoint))


def encoder_meta(encoder: Encoder) -> dict[str, Any]:
    """What an index stores about the encoder that embedded it."""
    return {
        "encoder_record": {k: encoder.record.get(k) for k in RECORD_KEYS},
        "encoder_fingerprint": encoder.fingerprint,
        "checkpoint": str(Path(encoder.source).resolve()),
        "view": "reference",
    }
