"""``geokit index build`` and ``geokit locate``. Imported on every start: click only here."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, cast

import click

from geokit.errors import GeokitError


@click.group("index")
def index() -> None:
    """Indexes of geo-tagged reference tiles for 'geokit locate'."""


@index.command("build")
@click.option(
    "--checkpoint", type=click.Path(dir_okay=False), required=True, help="model.safetensors written by 'geokit train'."
)
@click.option(
    "--references",
    type=click.Path(),
    help="A CSV path,lat,lon (paths relative to it), a folder "
    "holding references.csv (or one CSV), or a folder of images.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Index the reference set of this config's dataset instead of --references.",
)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Config override (with --config).")
@click.option("--split", default=None, help="Evaluation split of the dataset (with --config).")
@click.option("--output", type=click.Path(dir_okay=False), required=True, help="The index file to write.")
@click.option(
    "--type",
    "index_type",
    type=click.Choice(["flat", "ivf", "ivfpq", "hnsw"]),
    default="flat",
    show_default=True,
    help="flat: exact; ivf/ivfpq/hnsw: approximate (faiss), for big galleries.",
)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float16"]),
    default="float32",
    show_default=True,
    help="Storage of flat vectors (float16 halves the file).",
)
@click.option("--nlist", type=int, default=None, help="ivf/ivfpq: inverted lists (default ≈ 4·√N).")
@click.option("--nprobe", type=int, default=16, show_default=True, help="ivf/ivfpq: lists searched per query.")
@click.option("--m", "pq_m", type=int, default=None, help="ivfpq: sub-quantisers (divides the dim; default ≤ 64).")
@click.option("--nbits", type=int, default=8, show_default=True, help="ivfpq: bits per sub-quantiser.")
@click.option("--hnsw-m", type=int, default=32, show_default=True, help="hnsw: links per node.")
@click.option("--ef-construction", type=int, default=80, show_default=True, help="hnsw: build effort.")
@click.option(
    "--ef-search",
    type=int,
    default=64,
    show_default=True,
    help="hnsw: search effort. Raise it for big galleries: recall@1 measured 0.999 at 100k vectors "
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
    index_type: Literal["flat", "ivf", "ivfpq", "hnsw"],  # the click.Choice above
    dtype: Literal["float32", "float16"],
    nlist: int | None,
    nprobe: int,
    pq_m: int | None,
    nbits: int,
    hnsw_m: int,
    ef_construction: int,
    ef_search: int,
    batch_size: int,
    chunk: int,
    device: str,
    dist_timeout: float,
) -> None:
    """Embed reference tiles with a checkpoint and save a searchable index.

    The embeddings stream through a spool file next to OUTPUT, so the gallery need not fit in
    memory (README: "Several GPUs, several machines, big galleries"). Under torchrun
    (``torchrun --nproc_per_node=N -m geokit index build ...``) every rank embeds its share and
    rank 0 writes the index."""
    import numpy as np

    from geokit.index import IndexSpec, build_from_checkpoint, dataset_references, read_references

    if (references is None) == (config_path is None):
        raise GeokitError("give exactly one of --references (CSV or folder) and --config (a dataset)")
    refs = read_references(references) if references else dataset_references(cast(str, config_path), overrides, split)
    spec = IndexSpec(
        type=index_type,
        dtype=dtype,
        nlist=nlist,
        nprobe=nprobe,
        m=pq_m,
        nbits=nbits,
        hnsw_m=hnsw_m,
        ef_construction=ef_construction,
        ef_search=ef_search,
    )
    info = cast(
        "dict[str, Any] | None",
        build_from_checkpoint(  # load=False: the index's metadata (or None on other ranks)
            checkpoint,
            refs,
            output,
            spec,
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
@click.option(
    "--index",
    "index_path",
    type=click.Path(dir_okay=False),
    required=True,
    help="An index written by 'geokit index build'.",
)
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False),
    default=None,
    help="Weights to embed the photos (default: the checkpoint recorded in the index).",
)
@click.option(
    "--view",
    type=click.Choice(["query", "reference"]),
    default="query",
    show_default=True,
    help="query: street-level panorama / drone image; reference: an aerial tile.",
)
@click.option("--top-k", "top_k", type=click.IntRange(1), default=5, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@click.option(
    "--radius",
    type=float,
    default=100.0,
    show_default=True,
    help="Candidates closer than this many metres to the top-1 tile support it (consensus).",
)
@click.option(
    "--sheet",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write a PNG: each photo (file name, consensus) with its top-k tiles (rank, score, lat/lon).",
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
    from geokit.locate import Localizer, contact_sheet, format_results

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
