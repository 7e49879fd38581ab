"""``geokit index build`` and ``geokit locate``. Imported on every start: click only here."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import click

from geokit.embedding import EMBEDDING_DTYPES
from geokit.errors import GeokitError
from geokit.retrieval import TYPES, IndexSpec  # cheap: no numpy (see geokit.retrieval)


@click.group("index")
def index() -> None:
    """Indexes of geo-tagged reference tiles for 'geokit locate'."""


def _file_option(*decls: str, help: str, required: bool = False) -> Any:
    """An option naming a file (not a folder)."""
    return click.option(*decls, type=click.Path(dir_okay=False), required=required, default=None, help=help)


def _choice_option(*decls: str, choices: Sequence[str], default: str, help: str) -> Any:
    return click.option(*decls, type=click.Choice(list(choices)), default=default, show_default=True, help=help)


def _spec_option(flag: str, field: str, help: str) -> Any:
    """An IndexSpec parameter as an option: its default is the IndexSpec's (one source)."""
    default = getattr(IndexSpec, field)
    return click.option(flag, field, type=int, default=default, show_default=default is not None, help=help)


@index.command("build")
@_file_option("--checkpoint", required=True, help="model.safetensors written by 'geokit train'.")
@click.option(
    "--references",
    type=click.Path(),
    help="A CSV path,lat,lon (paths relative to it), a folder "
    "holding references.csv (or one CSV), or a folder of images.",
)
@_file_option(
    "--config", "config_path", help="Index the reference set of this config's dataset instead of --references."
)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Config override (with --config).")
@click.option("--split", default=None, help="Evaluation split of the dataset (with --config).")
@_file_option("--output", required=True, help="The index file to write.")
@_choice_option(
    "--type",
    "type",
    choices=TYPES,
    default=IndexSpec.type,
    help="flat: exact; ivf/ivfpq/hnsw: approximate (faiss), for big galleries.",
)
@_choice_option(
    "--dtype",
    choices=EMBEDDING_DTYPES,
    default=IndexSpec.dtype,
    help="Storage of flat vectors (float16 halves the file).",
)
@_spec_option("--nlist", "nlist", "ivf/ivfpq: inverted lists (default ≈ 4·√N).")
@_spec_option("--nprobe", "nprobe", "ivf/ivfpq: lists searched per query.")
@_spec_option("--m", "m", "ivfpq: sub-quantisers (divides the dim; default ≤ 64).")
@_spec_option("--nbits", "nbits", "ivfpq: bits per sub-quantiser.")
@_spec_option("--hnsw-m", "hnsw_m", "hnsw: links per node.")
@_spec_option("--ef-construction", "ef_construction", "hnsw: build effort.")
@_spec_option(
    "--ef-search",
    "ef_search",
    "hnsw: search effort. Raise it for big galleries: recall@1 measured 0.999 at 100k vectors "
    "but 0.77 at 1M, where 256 gave 0.96 (BENCHMARKS.md).",
)
@click.option("--batch-size", type=int, default=64, show_default=True, help="Images per embedding batch.")
@click.option(
    "--chunk",
    type=click.IntRange(1),
    default=1024,
    show_default=True,
    help="Images embedded per streaming step (split over the ranks under torchrun).",
)
@click.option(
    "--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N (torchrun: cuda:LOCAL_RANK)."
)
@click.option(
    "--dist-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=1800.0,
    show_default=True,
    help="torchrun: seconds a rank waits for the others before it fails instead of hanging.",
)
def build(
    checkpoint: str,
    references: str | None,
    config_path: str | None,
    overrides: tuple[str, ...],
    split: str | None,
    output: str,
    batch_size: int,
    chunk: int,
    device: str,
    dist_timeout: float,
    **spec: Any,  # the IndexSpec options above, by field name
) -> None:
    """Embed reference tiles with a checkpoint and save a searchable index.

    The embeddings stream through a spool file next to OUTPUT, so the gallery need not fit in
    memory (README: "Several GPUs, several machines, big galleries"). Under torchrun
    (``torchrun --nproc_per_node=N -m geokit index build ...``) every rank embeds its share and
    rank 0 writes the index."""
    import numpy as np

    from geokit.retrieval import build_from_checkpoint, dataset_references, read_references

    if (references is None) == (config_path is None):
        raise GeokitError("give exactly one of --references (CSV or folder) and --config (a dataset)")
    refs = read_references(references) if references else dataset_references(cast(str, config_path), overrides, split)
    info = cast(
        "dict[str, Any] | None",
        build_from_checkpoint(  # load=False: the index's metadata (or None on other ranks)
            checkpoint,
            refs,
            output,
            IndexSpec(**spec),
            batch_size=batch_size,
            chunk=chunk,
            device=device,
            load=False,
            dist_timeout=dist_timeout,
        ),
    )
    if info is None:  # a rank other than 0 under torchrun: rank 0 reports
        return
    located = int((~np.isnan(refs.latlon).any(1)).sum())
    click.echo(
        f"index: {output} ({info['type']}, {info['count']} tiles, {located} with lat/lon, "
        f"{Path(output).stat().st_size / 2**20:.1f} MiB)"
    )


@click.command("locate")
@click.argument("photos", nargs=-1, required=True, type=click.Path(dir_okay=False))
@_file_option("--index", "index_path", required=True, help="An index written by 'geokit index build'.")
@_file_option("--checkpoint", help="Weights to embed the photos (default: the checkpoint recorded in the index).")
@_choice_option(
    "--view",
    choices=("query", "reference"),
    default="query",
    help="query: street-level panorama / drone image; reference: an aerial tile.",
)
@click.option("--top-k", "top_k", type=click.IntRange(1), default=5, show_default=True)
@_choice_option("--format", "fmt", choices=("table", "json", "csv"), default="table", help="How results are printed.")
@click.option(
    "--radius",
    type=float,
    default=100.0,
    show_default=True,
    help="Candidates closer than this many metres to the top-1 tile support it (consensus).",
)
@_file_option(
    "--sheet", help="Also write a PNG: each photo (file name, consensus) with its top-k tiles (rank, score, lat/lon)."
)
@click.option("--device", default="auto", show_default=True)
@click.option(
    "--tiles-root",
    type=click.Path(file_okay=False),
    default=None,
    help="The folder holding the index's tiles (default: the one the index records); "
    "an index naming files outside it is refused.",
)
@click.option("--allow-outside-paths", is_flag=True, help="Trust the index's tile paths wherever they point.")
def locate(
    photos: tuple[str, ...],
    index_path: str,
    checkpoint: str | None,
    view: str,
    top_k: int,
    fmt: str,
    radius: float,
    sheet: str | None,
    device: str,
    tiles_root: str | None = None,
    allow_outside_paths: bool = False,
) -> None:
    """Find where PHOTO... were taken: top-k tiles with lat/lon, score and a consensus."""
    from geokit.retrieval.locate import Localizer, contact_sheet, format_results

    loc = Localizer(
        index_path,
        checkpoint,
        view=view,
        device=device,
        consensus_radius_m=radius,
        tiles_root=tiles_root,
        allow_outside=allow_outside_paths,
    )
    results = loc.locate(list(photos), k=top_k)
    click.echo(format_results(results, fmt))
    if sheet:
        contact_sheet(results, sheet)
        click.echo(f"sheet: {sheet}", err=True)
