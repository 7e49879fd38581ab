"""``geokit demo``: train + evaluate + report on the synthetic world, from one shipped config.

It is ``geokit train`` and ``geokit evaluate`` on ``demo.yaml`` (the same engine calls, no
separate code path) followed by the report pictures of :mod:`geokit.cli.report`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np


@click.command("demo")
@click.option(
    "--output",
    type=click.Path(file_okay=False),
    default="runs/demo",
    show_default=True,
    help="Folder for the run, metrics.json and the pictures (re-running resumes).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Use an edited copy of the demo config (default: the shipped demo.yaml).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config key, e.g. --set train.epochs=2 (repeatable).",
)
def demo_cmd(output: str, config_path: str | None, overrides: tuple[str, ...]) -> None:
    """Generate the synthetic city, train a small ConvNeXt from scratch, evaluate on the held-out
    area and draw the report (minutes on 2 CPU cores, see BENCHMARKS.md; no network)."""
    from geokit.runtime import setup_logging
    from geokit_plugins.datasets.synthetic import DEMO_CONFIG

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    setup_logging()
    summary = run_demo(Path(config_path) if config_path else DEMO_CONFIG, overrides, out)
    click.echo(summary)


def run_demo(config_path: Path, overrides: tuple[str, ...] | list[str], out: Path, *, show: bool | None = None) -> str:
    """The whole demo; returns the terminal summary. Everything is written into ``out``."""
    from PIL import Image

    from geokit import config
    from geokit.checkpoint import atomic_write_text
    from geokit.cli import report
    from geokit.engine import WEIGHTS, train
    from geokit.engine.evaluation import format_table, run_protocol
    from geokit.errors import GeokitError
    from geokit.registry import create

    t0 = time.perf_counter()
    cfg = config.load(config_path, overrides)
    # Build the dataset once up front so generation is timed on its own (train() finds it cached).
    dataset = create("dataset", cfg.names["dataset"], cfg.dataset)
    t_gen = time.perf_counter() - t0
    world = getattr(dataset, "world", None)
    result = train(cfg, out, show=show)
    t_train = time.perf_counter() - t0 - t_gen
    parts = result.parts
    if result.epochs_run == 0 and (out / WEIGHTS).exists():  # an already finished run: its weights
        parts.load(out / WEIGHTS)
    split = "test" if "test" in parts.dataset.splits else None
    res = run_protocol(parts, split, show=show)
    t_eval = time.perf_counter() - t0 - t_gen - t_train
    metrics = res.metrics
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")

    es = res.eval_set
    top1 = report.top_k(res.query, res.reference, 1)[:, 0]
    sheet = report.retrieval_sheet(parts.dataset, es, res.query, res.reference, out / "retrieval.png")
    history = result.history or _read_jsonl(out / "metrics.jsonl")
    curve = report.training_curve(
        history, out / "training_curve.png", label="R@1 (%) during training, on the val split"
    )
    pictures = [sheet, curve]
    errors = report.localisation_errors(es, top1)
    if errors is not None:
        background = bounds = None
        if world is not None and (Path(world) / "map.jpg").is_file():
            background = Image.open(Path(world) / "map.jpg")
            bounds = json.loads((Path(world) / "world.json").read_text())["bounds"]
        pictures.append(report.location_map(es, top1, out / "map.png", background=background, bounds=bounds))
    t_total = time.perf_counter() - t0

    if not metrics.get("references"):
        raise GeokitError("demo: the evaluation gallery is empty")
    chance1 = 100.0 / metrics["references"]
    lines = [
        "",
        format_table(
            metrics,
            f"geokit demo: {cfg.names['dataset']} / {es.name} "
            f"({cfg.names['encoder']} {getattr(cfg.encoder, 'model', '')}, sampler {cfg.names['sampler']})",
        ),
        f"R@1 is {metrics['R@1'] / chance1:.0f}x chance ({chance1:.2f}% for one guess among "
        f"{int(metrics['references'])} tiles); R@10 chance {min(100.0, 10 * chance1):.2f}%",
    ]
    if errors is not None:
        lines.append(
            f"top-1 localisation error: median {np.median(errors):.0f} m, "
            f"{100 * (errors <= 25).mean():.1f}% within 25 m"
        )
    lines += [
        f"time: {t_total:.0f} s (world {t_gen:.0f} s, training {t_train:.0f} s, "
        f"evaluation {t_eval:.0f} s, report {t_total - t_gen - t_train - t_eval:.0f} s)",
        f"metrics:  {out / 'metrics.json'}",
        *(f"picture:  {p}" for p in pictures),
        f"weights:  {out / WEIGHTS}   (config: {out / 'config.yaml'})",
    ]
    if world is not None:
        lines.append(f"world:    {world}")
    atomic_write_text(out / "summary.txt", "\n".join(lines).lstrip("\n") + "\n")
    return "\n".join(lines)


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
