"""``geokit datasets``: check and describe dataset folders. Imports only click at module level."""

from __future__ import annotations

import json
import sys
from typing import Any

import click


@click.group("datasets")
def datasets() -> None:
    """Check dataset folders before training, and show the layouts they must have."""


def _dataset_section(
    name: str | None, root: str | None, config_path: str | None, overrides: tuple[str, ...]
) -> dict[str, Any]:
    from geokit.config import apply_overrides, read_yaml
    from geokit.errors import GeokitError

    if config_path and name:
        raise GeokitError("give either a dataset NAME (with --root) or --config, not both")
    if config_path:
        data = read_yaml(config_path)
    elif name:
        data = {"dataset": {"name": name, **({"root": root} if root else {})}}
    else:
        raise GeokitError(
            "say what to verify: 'geokit datasets verify --config FILE' or "
            "'geokit datasets verify NAME --root DIR' (NAME: see 'geokit plugins')"
        )
    # Per-dataset form: bare option names are dataset options (--set mode=cross).
    fixed = [o if "." in o.partition("=")[0] or config_path else f"dataset.{o}" for o in overrides]
    if config_path and root:
        fixed.append(f"dataset.root={root}")
    data = apply_overrides(data, fixed)
    section = data.get("dataset")
    if isinstance(section, str):
        section = {"name": section}
    if not isinstance(section, dict) or not section.get("name"):
        raise GeokitError(f"{config_path or 'config'}: no 'dataset' section with a 'name'")
    return dict(section)


@datasets.command("verify")
@click.argument("name", required=False)
@click.option("--root", type=click.Path(), help="The dataset folder (with NAME; overrides dataset.root with --config).")
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), help="A run config; its dataset section is checked."
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config key (dataset.mode=cross, or mode=cross with NAME). Repeatable.",
)
@click.option("--full", is_flag=True, help="Decode every image (default: a random sample).")
@click.option(
    "--sample",
    type=click.IntRange(min=0),
    default=200,
    show_default=True,
    help="How many images to decode without --full.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the decode sample.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--strict", is_flag=True, help="Fail on warnings too (e.g. a subset of the dataset).")
def verify_cmd(
    name: str | None,
    root: str | None,
    config_path: str | None,
    overrides: tuple[str, ...],
    full: bool,
    sample: int,
    seed: int,
    as_json: bool,
    strict: bool,
) -> None:
    """Check a dataset folder: split files parse, every listed image exists, a sample (or all,
    --full) decodes, every query has a true reference, and the counts match the public dataset.

    \b
    Examples:
      geokit datasets verify cvusa --root data/CVUSA
      geokit datasets verify vigor --root data/VIGOR --set mode=cross --full
      geokit datasets verify --config examples/configs/cvact-val.yaml --set dataset.root=data/CVACT

    Every problem names the file and line; the exit status is 1 when there are errors.
    """
    from geokit.errors import GeokitError
    from geokit.problems import Problem
    from geokit.registry import get_registry
    from geokit.verify import Report, verify_dataset

    section = _dataset_section(name, root, config_path, overrides)
    ds_name = section.pop("name")
    comp = get_registry("dataset").get(ds_name)
    opts = comp.parse_options(section, prefix="dataset")
    show = not as_json and sys.stderr.isatty()
    try:
        ds = comp.factory(opts)
    except GeokitError as exc:
        report = Report(ds_name)
        report.problems.add(Problem("error", str(exc), category="dataset folder"))
    else:

        def progress(i: int, n: int) -> None:
            if show and (i == n or i % 500 == 0):
                click.echo(f"\rdecoding images {i:,}/{n:,}", nl=i == n, err=True)

        report = verify_dataset(ds, sample=sample, full=full, seed=seed, name=ds_name, on_progress=progress)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(report.render())
    failed = not report.ok or (strict and report.problems.warnings)
    if failed:
        sys.exit(1)


@datasets.command("layout")
@click.argument("name")
def layout_cmd(name: str) -> None:
    """Show the folder layout dataset NAME expects, and its options."""
    from geokit.registry import get_registry

    comp = get_registry("dataset").get(name)
    doc = (comp.factory.__doc__ or comp.summary or "").strip()
    click.echo(f"{name}: {doc}")
    layout = getattr(comp.factory, "layout", "")
    if layout:
        click.echo("\nexpected layout:\n" + layout)
    click.echo("\noptions (dataset.<key>):")
    for key, field in comp.options.model_fields.items():
        default = "required" if field.is_required() else f"default {field.default!r}"
        click.echo(f"  {key}: {field.description or ''} ({default})")
