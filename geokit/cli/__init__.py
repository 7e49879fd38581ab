"""The ``geokit`` command line (click). Heavy modules are imported inside commands."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from geokit.errors import GeokitError

CONFIG = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), required=True, help="Run config (YAML or JSON)."
)
SET = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config key, e.g. --set train.lr=5e-4 (repeatable).",
)


# Exit statuses (README, "Exit status"): 0 done; 1 `datasets verify` found errors; 2 a problem
# the user can fix (config, data, files, plugins; click's usage errors too); 130 training
# stopped by a signal after saving its state (re-run to resume).
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class UserError(click.ClickException):
    exit_code = EXIT_USER_ERROR


class Interrupted(click.ClickException):
    exit_code = EXIT_INTERRUPTED


class GeokitGroup(click.Group):
    """Turns GeokitError into a one-paragraph message and exit status 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except GeokitError as exc:
            from geokit.engine import TrainingInterrupted

            if isinstance(exc, TrainingInterrupted):
                raise Interrupted(str(exc)) from None
            raise UserError(str(exc)) from None
        except OSError as exc:  # a full disk, a read-only folder: the user's to fix, no traceback
            if exc.errno not in _DISK_ERRORS:
                raise
            where = f" {exc.filename}" if exc.filename else ""
            raise UserError(
                f"cannot write or read{where}: {exc.strerror or exc}. Files written "
                "atomically (checkpoints, indexes, metrics) are intact; free some space or "
                "fix the permissions and re-run."
            ) from None


_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


DISABLE = "--disable-plugin"


@click.group(cls=GeokitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="geokit")
@click.option(
    DISABLE,
    "disabled",
    multiple=True,
    metavar="NAME",
    help="Leave out the plugin with this entry-point name (repeatable; like pytest's "
    "-p no:NAME). Same as GEOKIT_DISABLE_PLUGINS=NAME1,NAME2.",
)
def cli(disabled: tuple[str, ...]) -> None:
    """geokit: cross-view geo-localisation (Sample4Geo), every part a plugin."""
    if disabled:
        from geokit._plugin_manager import DISABLE_NAMES_ENV, disabled_names, get_manager, reset_manager

        if not set(disabled) <= set(get_manager().disabled):  # not already applied by main()
            os.environ[DISABLE_NAMES_ENV] = ",".join(sorted(disabled_names() | set(disabled)))
            reset_manager()


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def plugins_cmd(as_json: bool) -> None:
    """List every registered component: kind, name, plugin and distribution."""
    from geokit._plugin_manager import get_manager
    from geokit.hookspecs import ALL_KINDS as KINDS
    from geokit.registry import get_registry

    mgr = get_manager()
    rows: list[dict[str, Any]] = []
    failures = []
    for kind in KINDS:
        try:
            comps = list(get_registry(kind))
        except GeokitError as exc:  # e.g. two plugins claim one name: list the rest anyway
            failures.append(str(exc))
            comps = [c for c in get_registry(kind)._pending]
        for comp in comps:
            _dist, _, version = (comp.distribution or "").partition(" ")
            rows.append(
                {
                    "kind": kind,
                    "name": comp.name,
                    "plugin": comp.plugin,
                    "distribution": comp.distribution,
                    "version": version or None,
                    "summary": comp.summary,
                    "replaces": list(comp.replaced),
                    "broken": comp.plugin in mgr.broken,
                }
            )
    problems: list[dict[str, Any]] = [
        {
            "plugin": name,
            "distribution": info.distribution,
            "entry_point": info.value,
            "status": "broken",
            "reason": reason,
        }
        for name, (info, reason) in sorted(mgr.broken.items())
    ]
    problems += [
        {
            "plugin": name,
            "distribution": info.distribution,
            "entry_point": info.value,
            "status": "disabled",
            "reason": "disabled by name (GEOKIT_DISABLE_PLUGINS or --disable-plugin)",
        }
        for name, info in sorted(mgr.disabled.items())
    ]
    if as_json:
        click.echo(json.dumps(rows + [dict(p, kind=None, name=None) for p in problems], indent=2))
        return
    width = max((len(r["name"]) for r in rows), default=4)
    for kind in KINDS:
        click.echo(f"{kind}{'es' if kind == 'loss' else 's'}:")
        for r in (r for r in rows if r["kind"] == kind):
            origin = r["distribution"] or r["plugin"]
            extra = f" (replaces {', '.join(r['replaces'])})" if r["replaces"] else ""
            mark = "  BROKEN (see below)" if r["broken"] else ""
            click.echo(f"  {r['name']:<{width}}  {r['summary']}  [{r['plugin']}: {origin}]{extra}{mark}")
    if problems or failures:
        click.echo("plugins not (fully) loaded:")
        for p in problems:
            origin = f" from {p['distribution']}" if p["distribution"] else ""
            click.echo(f"  {p['plugin']} ({p['entry_point']}{origin}): {p['status'].upper()}: {p['reason']}")
        for f in failures:
            click.echo(f"  {f}")


@cli.group("config")
def config_group() -> None:
    """Inspect configs."""


@config_group.command("show")
@CONFIG
@SET
def config_show(config_path: str, overrides: tuple[str, ...]) -> None:
    """Print the resolved config (every default filled in)."""
    from geokit import config

    click.echo(config.load(config_path, overrides).to_yaml(), nl=False)


@cli.command("train")
@CONFIG
@SET
@click.option(
    "--output",
    type=click.Path(file_okay=False),
    required=True,
    help="Run folder; re-running on the same folder resumes.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Resume even though the saved config differs or is missing (the differences are "
    "logged). Raising only train.epochs needs no --force.",
)
def train_cmd(config_path: str, overrides: tuple[str, ...], output: str, force: bool) -> None:
    """Train a model; writes config.yaml, metrics.jsonl and model.safetensors into OUTPUT."""
    from geokit import config
    from geokit.engine import train

    cfg = config.load(config_path, overrides)
    result = train(cfg, output, force=force)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, only rank 0 reports
        click.echo(f"weights: {Path(output) / 'model.safetensors'}")
        if result.history:
            click.echo(f"final training loss: {result.history[-1]['loss']:.4f}")


@cli.command("evaluate")
@CONFIG
@SET
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False),
    help="Weights to load (model.safetensors); its record supplies the encoder and the "
    "input sizes. Default: the encoder as configured.",
)
@click.option("--output", type=click.Path(dir_okay=False), help="Write the metrics as JSON here.")
@click.option(
    "--save-embeddings",
    type=click.Path(dir_okay=False),
    help="Write query/reference embeddings and labels (safetensors).",
)
def evaluate_cmd(
    config_path: str,
    overrides: tuple[str, ...],
    checkpoint: str | None,
    output: str | None,
    save_embeddings: str | None,
) -> None:
    """Evaluate on the dataset's protocol and print a table (under torchrun: every rank embeds its
    share, rank 0 prints and writes)."""
    from geokit import config
    from geokit.checkpoint import atomic_write_text
    from geokit.engine.evaluation import evaluate, format_table

    # only encoder and dataset are used; with a checkpoint its record supplies the encoder
    cfg = config.load(config_path, overrides, require=("dataset",) if checkpoint else ("encoder", "dataset"))
    res = evaluate(cfg, checkpoint, save_embeddings=save_embeddings)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports and writes
        return
    click.echo(format_table(res.metrics, f"{cfg.names['dataset']} / {res.eval_set.name}"))
    if output:
        atomic_write_text(output, json.dumps(res.metrics, indent=2) + "\n")


# Core sub-commands kept in their own modules ("module:attribute"); imported on every start,
# so those modules import only click at module level.
COMMAND_MODULES: tuple[str, ...] = (
    "geokit.cli._datasets:datasets",
    "geokit.cli._index:index",
    "geokit.cli._index:locate",
    "geokit.cli._weights:import_weights",
)


def _load_plugin_commands() -> None:
    import importlib

    from geokit._plugin_manager import get_manager

    for spec in COMMAND_MODULES:
        module, _, attr = spec.partition(":")
        cli.add_command(getattr(importlib.import_module(module), attr))
    get_manager().register_commands(cli)


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    import os

    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    args = list(sys.argv[1:] if argv is None else argv)
    _disable_from_args(args)  # before plugins load, so a broken one can be left out
    try:
        _load_plugin_commands()
    except GeokitError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_USER_ERROR)
    cli.main(args=args, prog_name="geokit")


def _disable_from_args(args: list[str]) -> None:
    """Apply ``--disable-plugin NAME`` (given before the command) to GEOKIT_DISABLE_PLUGINS."""
    from geokit._plugin_manager import DISABLE_NAMES_ENV, disabled_names

    names = set()
    i = 0
    while i < len(args) and args[i].startswith("-"):  # stop at the command: later options are its own
        if args[i] == DISABLE and i + 1 < len(args):
            names.add(args[i + 1])
            i += 1
        elif args[i].startswith(DISABLE + "="):
            names.add(args[i].split("=", 1)[1])
        i += 1
    if names:
        os.environ[DISABLE_NAMES_ENV] = ",".join(sorted(disabled_names() | names))
