"""The one embedding path: images -> L2-normalised float32 vectors, in inference mode.

Evaluation, similarity mining (``EpochContext.embed``) and localisation all call :func:`embed_paths`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, get_args

from geokit.errors import GeokitError

if TYPE_CHECKING:  # importing this module stays cheap: the CLI reads EMBEDDING_DTYPES on start
    import numpy as np

    from geokit.data import CrossViewDataset, Normalisation, Size

# How embeddings may be stored: float32, or float16 (half the file and memory; scores change by
# ~1e-3). They are always computed, normalised and compared in float32.
StoredDtype = Literal["float32", "float16"]
EMBEDDING_DTYPES: tuple[str, ...] = get_args(StoredDtype)


def embedding_dtype(stored: str = "float32") -> np.dtype:
    """The embedding-precision policy, in one place: the numpy dtype of embeddings stored as
    ``stored`` (one of :data:`EMBEDDING_DTYPES`); the default, float32, is also the dtype they
    are computed in (:func:`embed_paths`, evaluation's ``--save-embeddings``, faiss)."""
    if stored not in EMBEDDING_DTYPES:
        raise GeokitError(f"embeddings are stored as {' or '.join(EMBEDDING_DTYPES)}, not {stored!r}")
    import numpy as np

    return np.dtype(stored)


def embed_paths(
    encoder: Any,
    dataset: CrossViewDataset,
    paths: Sequence[str],
    size: Size,
    norm: Normalisation,
    *,
    batch_size: int = 128,
    device: Any = None,
    amp: bool = False,
    workers: int = 0,
    desc: str = "embed",
    show: bool | None = None,
    view: str = "query",
    transforms: Sequence[Any] = (),
    seed: int = 0,
    offset: int = 0,
) -> np.ndarray:
    """Embed ``paths`` (resized to ``size``, then ``transforms`` in evaluation mode) with
    ``encoder`` as ``view``; returns ``(N, D)`` float32, unit rows. ``offset``: the position of
    ``paths[0]`` in the full list (:func:`geokit.distributed.embed_sharded`), which seeds the
    transforms' random choices per image."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from geokit.data import ImageList
    from geokit.model import encode
    from geokit.runtime import autocast, progress

    device = device or next(encoder.parameters()).device
    images = ImageList(dataset, paths, size, norm, view=view, transforms=transforms, seed=seed, offset=offset)
    loader: DataLoader[Any] = DataLoader(
        images,  # type: ignore[arg-type]  # a map-style dataset (len, getitem) without torch's base class
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    was_training = encoder.training
    encoder.eval()
    out = np.empty((len(paths), int(encoder.embedding_dim)), dtype=embedding_dtype())
    pos = 0
    try:
        with torch.inference_mode(), autocast(device, amp):
            for batch in progress(loader, total=len(loader), desc=desc, enabled=show):
                emb = encode(encoder, batch.to(device, non_blocking=True), view).float()
                emb = torch.nn.functional.normalize(emb, dim=1)
                out[pos : pos + len(emb)] = emb.cpu().numpy()
                pos += len(emb)
    finally:
        encoder.train(was_training)
    return out
