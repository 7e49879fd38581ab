"""``geokit import-weights``: a weights file made elsewhere → a geokit checkpoint with its record.

Imported on every start: click only at module level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from geokit.errors import GeokitError


@click.command("import-weights")
@click.argument("source", type=click.Path(dir_okay=False))
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    required=True,
    help="Run config naming the encoder (e.g. the recipe the weights were trained with) and "
    "the dataset (its sizes go into the record; its root must exist).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config key, e.g. --set dataset.root=/data/CVUSA (repeatable).",
)
@click.option(
    "--output", type=click.Path(dir_okay=False), required=True, help="The geokit checkpoint to write (.safetensors)."
)
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
def import_weights(source: str, config_path: str, overrides: tuple[str, ...], output: str, force: bool) -> None:
    """Convert SOURCE into a geokit checkpoint usable by evaluate --checkpoint, index and locate.

    SOURCE: Sample4Geo's released checkpoints as they are (the timm model under 'model.' plus
    'logit_scale', optionally under DataParallel's 'module.'), a plain timm state dict (.pth/.bin,
    read with torch.load(weights_only=True): pickled code is refused unread) or a .safetensors file.
    Tensors are copied unchanged; the record (sizes, mean/std, embedding dim) comes from the config
    and the encoder, as 'geokit train' writes it.
    """
    from geokit import config

    cfg = config.load(config_path, overrides)
    summary = import_weights_file(source, cfg, output, force=force)
    for line in summary["notes"]:
        click.echo(f"note: {line}")
    loss = ", ".join(summary["loss_tensors"]) or "none (the loss starts as configured)"
    click.echo(
        f"imported {summary['tensors']} encoder tensors from {source} ({summary['layout']}), "
        f"unchanged; loss tensors from the file: {loss}"
    )
    click.echo(
        f"checkpoint: {output} (embedding_dim {summary['embedding_dim']}, query "
        f"{summary['query_size']}, reference {summary['reference_size']})"
    )


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def import_weights_file(source: str | Path, cfg: Any, output: str | Path, *, force: bool = False) -> dict[str, Any]:
    """Build ``cfg``'s encoder with ``weights=source`` (so the encoder plugin reads the file, as
    for fine-tuning), check that every encoder tensor came bit-identical from ``source``, and save
    the parts with :meth:`geokit.model.Parts.save`. Returns a summary (counts, notes)."""
    import torch

    from geokit import config as config_mod
    from geokit.checkpoint import read_foreign_weights
    from geokit.model import build
    from geokit.runtime import seed_everything

    src, out = Path(source), Path(output)
    if out.suffix != ".safetensors":
        raise GeokitError(f"--output {out}: a geokit checkpoint is a .safetensors file")
    if out.exists() and not force:
        raise GeokitError(f"--output {out} exists; pass --force to replace it")
    found = read_foreign_weights(src, what="import-weights SOURCE")
    data = cfg.to_dict()
    name = data["encoder"]["name"]
    if "weights" not in data["encoder"]:
        raise GeokitError(
            f"encoder '{name}' has no 'weights' option, so it cannot read {src}; "
            "import-weights needs an encoder that takes initial weights from a file"
        )
    data["encoder"]["weights"] = str(src)
    if "pretrained" in data["encoder"]:
        data["encoder"]["pretrained"] = False
    cfg = config_mod.resolve(data, source="import-weights config")
    seed_everything(cfg.seed)
    parts = build(cfg)  # the encoder reads and strictly loads SOURCE; loss_state reaches the loss

    tensors = parts.tensors()
    enc = {k[len("encoder.") :]: v for k, v in tensors.items() if k.startswith("encoder.")}

    def from_source(key: str, value: Any) -> bool:
        # The encoder may nest the network (``model.stem.0.weight`` for ``stem.0.weight``, or once
        # per branch); the tensor must equal a source tensor of the same name suffix exactly.
        parts_ = key.split(".")
        for i in range(len(parts_)):
            src_t = found.model.get(".".join(parts_[i:]))
            if (
                src_t is not None
                and src_t.dtype == value.dtype
                and src_t.shape == value.shape
                and torch.equal(src_t, value)
            ):
                return True
        return False

    unsourced = sorted(k for k, v in enc.items() if not from_source(k, v))
    if unsourced:
        shown = ", ".join(unsourced[:6]) + (f" (+{len(unsourced) - 6} more)" if len(unsourced) > 6 else "")
        raise GeokitError(
            f"import-weights: {len(unsourced)} encoder tensors would not come unchanged from {src}: "
            f"{shown}. The config's encoder has parts the file does not hold (e.g. a pooling head "
            "or another architecture) or other dtypes; choose the encoder the weights were trained with"
        )
    used = {".".join(k.split(".")[i:]) for k in enc for i in range(len(k.split(".")))}
    notes = []
    dropped = sorted(k for k in found.model if k not in used)
    if dropped:
        notes.append(
            f"not imported (the encoder has no place for them): {', '.join(dropped[:6])}"
            + (f" (+{len(dropped) - 6} more)" if len(dropped) > 6 else "")
        )
    loss_state = parts.loss.state_dict()
    placed = sorted(
        k
        for k, v in found.extra.items()
        if k in loss_state
        and tuple(v.shape) == tuple(loss_state[k].shape)
        and torch.equal(loss_state[k], v.to(loss_state[k].dtype))
    )
    if set(found.extra) - set(placed):
        notes.append(
            f"tensors beside the network that loss '{cfg.names['loss']}' has no place for, not "
            f"imported: {', '.join(sorted(set(found.extra) - set(placed)))}"
        )
    parts.save(out, imported_from={"file": src.name, "sha256": _sha256(src), "layout": found.layout})
    return {
        "tensors": len(enc),
        "layout": found.layout,
        "loss_tensors": placed,
        "notes": notes,
        "embedding_dim": int(parts.encoder.embedding_dim),
        "query_size": list(parts.dataset.query_size),
        "reference_size": list(parts.dataset.reference_size),
    }
