"""The first hour of a new user (issue 16): configs that state only what a command needs,
progress on long loops, a locate consensus that is never worse than its top-1, readable pictures."""

from __future__ import annotations

import logging
import re

import pytest

from geokit import config, runtime
from geokit.errors import GeokitError
from geokit.testing import tiny_config


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def geokit_lines():
    handler = _Lines()
    old = runtime.log.level
    runtime.log.addHandler(handler)
    runtime.log.setLevel(logging.INFO)
    yield handler.lines
    runtime.log.removeHandler(handler)
    runtime.log.setLevel(old)


# ------------------------------------------------------------------------------ config sections


def test_resolve_requires_only_the_sections_a_command_needs(pairs_root):
    data = tiny_config(pairs_root)
    del data["loss"], data["sampler"]
    with pytest.raises(GeokitError, match="missing config section 'loss'"):
        config.resolve(dict(data))  # train: all four
    cfg = config.resolve(dict(data), require=("encoder", "dataset"))
    assert cfg.loss is None and cfg.sampler is None and set(cfg.names) == {"encoder", "dataset"}
    assert set(cfg.to_dict()) == {"seed", "encoder", "dataset", "train", "eval"}
    del data["encoder"]
    with pytest.raises(GeokitError, match="missing config section 'encoder'"):
        config.resolve(dict(data), require=("encoder", "dataset"))
    assert config.resolve(dict(data), require=("dataset",)).encoder is None


# ------------------------------------------------------------------------------ progress


@pytest.mark.parametrize(
    "seconds, text", [(0, "0 s"), (59.4, "59 s"), (61, "1 min 01 s"), (3 * 3600 + 7 * 60 + 9, "3 h 07 min")]
)
def test_format_duration(seconds, text):
    assert runtime.format_duration(seconds) == text


def test_progress_prints_lines_with_rate_and_time_left_when_not_on_a_terminal(monkeypatch, geokit_lines):
    monkeypatch.setenv("GEOKIT_PROGRESS", "1")
    monkeypatch.setenv("GEOKIT_PROGRESS_EVERY", "0")
    monkeypatch.setattr(runtime, "show_progress", lambda: False)  # stderr is not a terminal
    assert list(runtime.progress(range(4), total=4, desc="test embed")) == [0, 1, 2, 3]
    assert [re.sub(r", [\d.]+(/s| s each), .*", "", x) for x in geokit_lines[:3]] == [
        "test embed: 1/4 (25 %)",
        "test embed: 2/4 (50 %)",
        "test embed: 3/4 (75 %)",
    ]
    assert all(" left" in x for x in geokit_lines[:3])
    assert re.fullmatch(r"test embed: 4 done in \d+ s", geokit_lines[3]), geokit_lines
    geokit_lines.clear()
    monkeypatch.setenv("GEOKIT_PROGRESS_EVERY", "3600")  # short loops say nothing
    assert list(runtime.progress(range(4), total=4, desc="quick")) == [0, 1, 2, 3]
    assert geokit_lines == []
    monkeypatch.setenv("GEOKIT_PROGRESS_EVERY", "0")
    assert list(runtime.progress(range(4), total=4, desc="off", enabled=False)) == [0, 1, 2, 3]
    monkeypatch.setenv("RANK", "1")  # under torchrun only rank 0 reports
    assert list(runtime.progress(range(4), total=4, desc="off")) == [0, 1, 2, 3]
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("GEOKIT_PROGRESS", "0")
    assert list(runtime.progress(range(4), total=4, desc="off")) == [0, 1, 2, 3]
    assert geokit_lines == []


def test_training_logs_rate_and_time_left_every_log_every_steps(tmp_path, pairs_root):
    import torch

    from geokit.engine import train

    threads = torch.get_num_threads()
    try:
        train(
            config.resolve(tiny_config(pairs_root, train={"epochs": 1, "log_every": 2})), tmp_path / "run", show=False
        )
    finally:
        torch.set_num_threads(threads)
    lines = [x for x in (tmp_path / "run" / "train.log").read_text().splitlines() if " step " in x]
    assert len(lines) == 3, lines  # 48 pairs, batches of 8: 6 steps
    assert re.search(r"epoch 1/1 step 2/6 loss [\d.]+ lr \S+  [\d.]+ pairs/s, training \d+ s left", lines[0]), lines


# ------------------------------------------------------------------------------ docs


ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def test_readme_says_how_to_get_geokit_on_path_and_make_shell_exists():
    readme = (ROOT / "README.md").read_text()
    assert "source .venv/bin/activate" in readme and ".venv/bin/geokit" in readme and "make shell" in readme
    assert re.search(r"^shell: ", (ROOT / "Makefile").read_text(), re.M)


def test_readme_documents_query_type_with_the_options_real_values():
    from typing import get_args

    from geokit_plugins.datasets.pairs import PairsOptions

    readme = (ROOT / "README.md").read_text()
    own = readme[readme.index("## Your own data") : readme.index("## Configuration reference")]
    values = get_args(PairsOptions.model_fields["query_type"].annotation)
    assert "query_type" in own and all(f"`{v}`" in own for v in values), values
    assert PairsOptions.model_fields["query_type"].default == "panorama" and "default" in own


def test_readme_references_csv_example_is_what_index_build_reads(tmp_path):
    from PIL import Image

    from geokit.index import read_references

    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("`--references` is a CSV") :]
    csv_text = block[block.index("```\n") + 4 :]
    csv_text = csv_text[: csv_text.index("```")]
    assert csv_text.startswith("path,lat,lon\n")
    for line in csv_text.splitlines()[1:]:
        (tmp_path / line.split(",")[0]).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / line.split(",")[0])
    (tmp_path / "tiles.csv").write_text(csv_text)
    refs = read_references(tmp_path / "tiles.csv")
    assert len(refs.paths) == 2 and abs(refs.latlon[0, 0] - 48.137154) < 1e-9
