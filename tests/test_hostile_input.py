"""Hostile files, faulty folders and broken plugins (issue 13): each class of the audit gives a
clear one-paragraph error or the right result, never a traceback, unbounded memory or a silently
wrong result. Tiny data only; every test here failed before its fix."""

from __future__ import annotations

import resource
import types

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import geokit
from geokit import _plugin_manager as gp
from geokit import config
from geokit.cli import cli
from geokit.errors import GeokitError
from geokit.testing import tiny_config


def write(tmp_path, data, name="run.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------- 1. bounded config reading

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi")
)


def test_yaml_alias_bomb_is_refused_without_expanding(tmp_path, pairs_root):
    data = tiny_config(pairs_root)
    text = yaml.safe_dump(data) + BOMB.replace("i: &i", "bomb: &i")
    assert len(BOMB) < 600  # 9**9 ≈ 387 million strings when expanded
    before = _max_rss_mb()
    with pytest.raises(GeokitError, match="alias bomb") as err:
        config.load(write(tmp_path, text))
    assert len(str(err.value)) < 500 and _max_rss_mb() - before < 200
    # the same through --set, into a typed key
    with pytest.raises(GeokitError, match="alias bomb"):
        config.apply_overrides({}, ["train.epochs=" + "{" + BOMB.replace("\n", ", ") + "}"])


def test_yaml_nesting_and_recursion_are_bounded(tmp_path):
    with pytest.raises(GeokitError, match=r"line 1 .*nesting deeper than 64"):
        config.read_yaml(write(tmp_path, "a: " + "[" * 5000 + "]" * 5000))
    with pytest.raises(GeokitError, match="refers to the value that contains it"):
        config.read_yaml(write(tmp_path, "a: &a [1, *a]\n"))
    with pytest.raises(GeokitError, match="invalid YAML .* a value cannot be read"):
        config.read_yaml(write(tmp_path, "seed: 1" + "0" * 5000))  # beyond Python's int parsing limit
    with pytest.raises(GeokitError, match="more than 64 levels"):
        config.apply_overrides({}, [".".join(["a"] * 100_000) + "=1"])
    (tmp_path / "bin.yaml").write_bytes(b"seed: \xff\xfe\n")
    with pytest.raises(GeokitError, match="not UTF-8"):
        config.read_yaml(tmp_path / "bin.yaml")


def test_validation_errors_never_print_huge_inputs(tmp_path, pairs_root):
    data = tiny_config(pairs_root)
    data["train"]["epochs"] = [list(range(300))] * 300  # 90,000 values in a typed key
    with pytest.raises(GeokitError, match="train.epochs") as err:
        config.load(write(tmp_path, data))
    assert len(str(err.value)) < 600


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.lr=.inf", "not a finite number"),
        ("train.lr=.nan", "not a finite number"),
        ("seed=-1", "config key 'seed'"),
        ("seed=100000000000000000000000", "config key 'seed'"),
        ("train.device=banana", "config key 'train.device'"),
    ],
)
def test_out_of_range_numbers_and_devices_are_config_errors(tmp_path, pairs_root, override, expected):
    with pytest.raises(GeokitError, match=expected) as err:
        config.load(write(tmp_path, tiny_config(pairs_root)), [override])
    assert len(str(err.value)) < 400


def test_messages_print_plain_numbers():
    from geokit.registry import short_repr

    assert short_repr(np.float64(10.0)) == "10.0"
    assert short_repr((np.float64(1.5), np.int64(3))) == "(1.5, 3)"
    assert len(short_repr("x" * 10**6)) < 200


def test_user_errors_exit_with_status_2(tmp_path):
    res = CliRunner().invoke(cli, ["config", "show", "--config", str(write(tmp_path, "a: [\n"))])
    assert res.exit_code == 2 and "invalid YAML" in res.output and "Traceback" not in res.output


# --------------------------------------------------------------- 7. broken plugins


class _Dist:
    def __init__(self, name):
        self.metadata, self.version = {"Name": name}, "0.1"


class _EP:
    group = "geokit"

    def __init__(self, name, obj):
        self.name, self.value, self.dist, self._obj = name, f"evil_pkg.{name}", _Dist("evil-pkg"), obj

    def load(self):
        return self._obj


def _plugin(name, **hooks):
    mod = types.ModuleType(name)
    for hook, fn in hooks.items():
        setattr(mod, hook, geokit.hookimpl(fn))
    return mod


@pytest.fixture
def install(monkeypatch, fresh_plugins):
    real = gp.metadata.entry_points

    def go(*eps):
        monkeypatch.setattr(
            gp.metadata, "entry_points", lambda group: [*real(group=group), *(eps if group == gp.GROUP else ())]
        )
        gp.reset_manager()

    return go


def _boom(**_):
    raise RuntimeError("kaboom")


def test_a_raising_command_hook_does_not_take_the_cli_down(install):
    from geokit.cli import main

    install(_EP("badcmd", _plugin("badcmd", geokit_register_commands=_boom)))
    with (
        pytest.warns(
            gp.PluginWarning,
            match="'badcmd = evil_pkg.badcmd' from distribution 'evil-pkg 0.1' "
            "failed in geokit_register_commands: RuntimeError: kaboom",
        ),
        pytest.raises(SystemExit) as ex,
    ):
        main(["--help"])
    assert ex.value.code == 0
    res = CliRunner().invoke(cli, ["plugins"])
    assert res.exit_code == 0 and "convnext" in res.output
    assert "badcmd (evil_pkg.badcmd from evil-pkg 0.1): BROKEN" in res.output


def test_a_raising_registration_hook_loses_only_its_own_entries(install):
    def half(registry):
        registry.add("half", lambda o: None)
        raise ValueError("oops")

    install(_EP("halfreg", _plugin("halfreg", geokit_register_samplers=half)))
    with pytest.warns(gp.PluginWarning, match="halfreg.*geokit_register_samplers: ValueError: oops"):
        names = geokit.registry.get_registry("sampler").names()
    assert "random" in names and "half" not in names
    res = CliRunner().invoke(cli, ["plugins", "--json"])
    assert res.exit_code == 0 and '"status": "broken"' in res.output


def test_factories_that_raise_or_return_the_wrong_kind_name_their_plugin(install):
    def reg_losses(registry):
        registry.add("crash", lambda o: 1 / 0)
        registry.add("notmodule", lambda o: "a string")

    def reg_samplers(registry):
        registry.add("nobatches", lambda o: object())

    install(
        _EP("wrongkind", _plugin("wrongkind", geokit_register_losses=reg_losses, geokit_register_samplers=reg_samplers))
    )
    from geokit.registry import create

    with pytest.raises(
        GeokitError,
        match=r"loss 'crash' \(plugin wrongkind, distribution evil-pkg 0.1\) "
        r"failed to build: ZeroDivisionError",
    ):
        create("loss", "crash")
    with pytest.raises(GeokitError, match=r"loss 'notmodule' \(plugin wrongkind.*returned str, not a torch.nn.Module"):
        create("loss", "notmodule")
    with pytest.raises(GeokitError, match=r"sampler 'nobatches' .*no method batches\(\)"):
        create("sampler", "nobatches")


@pytest.mark.parametrize(
    "batches, expected",
    [
        ([np.array([0, 1, 99])], "index 99, outside the 8 training pairs"),
        ([np.array([0, -1])], "index -1"),
        ([np.array([0.0, 1.0])], "float64 values"),
        ([np.array([[0, 1]])], "shape"),
        ([np.array([2, 2])], "same pair twice"),
    ],
)
def test_sampler_returning_invalid_indices_names_itself(batches, expected):
    from geokit.sampling import CheckedSampler, EpochContext
    from geokit.testing import synthetic_train_set

    class Bad:
        def batches(self, ctx):
            return batches

    ctx = EpochContext(epoch=1, epochs=1, batch_size=2, seed=0, train=synthetic_train_set(8))
    with pytest.raises(GeokitError, match=f"sampler 'bad' \\(plugin x\\) is broken: batch 0 of epoch 1 .*{expected}"):
        CheckedSampler(Bad(), "sampler 'bad' (plugin x)").batches(ctx)


def test_a_plugin_can_be_disabled_by_name(install, monkeypatch):
    from geokit.cli import main

    install(_EP("badcmd", _plugin("badcmd", geokit_register_commands=_boom)))
    monkeypatch.setenv(gp.DISABLE_NAMES_ENV, "")  # restored (removed) after the test
    with pytest.raises(SystemExit):
        main(["--disable-plugin", "badcmd", "--disable-plugin=cvusa", "plugins"])
    import os

    assert set(os.environ[gp.DISABLE_NAMES_ENV].split(",")) == {"badcmd", "cvusa"}
    mgr = gp.get_manager()
    assert "badcmd" not in mgr.broken and {"badcmd", "cvusa"} <= set(mgr.disabled)
    assert "cvusa" not in geokit.registry.get_registry("dataset")
    assert "pairs" in geokit.registry.get_registry("dataset")


# --------------------------------------------------------------- 5/6. one run per folder, faults


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, pairs_root):
    """A finished 1-epoch run; tests copy it before changing it."""
    tmp = tmp_path_factory.mktemp("run")
    cfg = tmp / "run.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(pairs_root, train={"epochs": 1})))
    out = tmp / "out"
    res = CliRunner().invoke(cli, ["train", "--config", str(cfg), "--output", str(out)])
    assert res.exit_code == 0, res.output
    return cfg, out


def _copy(run, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(run, out)
    return out


def _train(cfg, out, *extra):
    return CliRunner().invoke(cli, ["train", "--config", str(cfg), "--output", str(out), *extra])


@pytest.mark.slow
def test_a_folder_in_use_is_refused_and_a_stale_lock_is_not(finished_run, tmp_path):
    import fcntl

    from geokit.engine import LOCK

    cfg, run = finished_run
    out = _copy(run, tmp_path)
    with open(out / LOCK, "w") as fh:  # another process holding the folder
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        fh.write("4242\n")
        fh.flush()
        res = _train(cfg, out)
        assert res.exit_code == 2 and "in use by another 'geokit train' (process 4242)" in res.output
    # the holder died (the kernel released its lock): the file alone blocks nothing
    assert (out / LOCK).exists() and _train(cfg, out).exit_code == 0


@pytest.mark.slow
def test_resume_refusals_name_the_differing_keys_and_force_overrides(finished_run, tmp_path):
    cfg, run = finished_run
    out = _copy(run, tmp_path)
    res = _train(cfg, out, "--set", "train.lr=2e-3", "--set", "loss.temperature=0.1")
    assert res.exit_code == 2
    assert "loss.temperature: 0.07 -> 0.1" in res.output and "train.lr: 0.001 -> 0.002" in res.output
    (out / "config.yaml").unlink()
    res = _train(cfg, out)
    assert res.exit_code == 2 and "no config.yaml" in res.output and "--force" in res.output
    res = _train(cfg, out, "--force")
    assert res.exit_code == 0, res.output
    assert (out / "config.yaml").exists()
    res = _train(cfg, out, "--force", "--set", "train.epochs=2", "--set", "encoder.model=convnext_femto")
    assert res.exit_code == 2 and "does not fit this run's model" in res.output, res.output


@pytest.mark.slow
def test_raising_epochs_extends_a_finished_run(finished_run, tmp_path):
    from geokit.engine import lr_at

    cfg, run = finished_run
    out = _copy(run, tmp_path)
    res = _train(cfg, out, "--set", "train.epochs=2")
    assert res.exit_code == 0, res.output
    rows = [yaml.safe_load(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    log = (out / "train.log").read_text()
    assert "train.epochs raised from 1 to 2: the cosine schedule is recomputed for 12 steps" in log
    # 48 pairs / 8 = 6 steps per epoch, warm-up 3 steps: at step 6 of 12 the new cosine is a third
    # of the way down: 1e-3 * (1 + cos(pi / 3)) / 2 = 7.5e-4 (the old schedule had reached 0)
    assert abs(lr_at(6, 12, 3, 1e-3) - 7.5e-4) < 1e-12
    assert "at step 6 the lr continues at 0.00075 instead of 0 on the old schedule" in log
    assert _train(cfg, out, "--set", "train.epochs=1").exit_code == 2  # lowering is a change


@pytest.mark.slow
def test_leftover_temp_files_and_a_truncated_metrics_file_are_handled(finished_run, tmp_path):
    cfg, run = finished_run
    out = _copy(run, tmp_path)
    (out / ".state.safetensors.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 2, "lo')
    res = _train(cfg, out)
    assert res.exit_code == 0, res.output
    assert not list(out.glob(".*.tmp"))
    assert "ignored 1 unreadable line(s) (line 2)" in (out / "train.log").read_text()


def test_files_follow_the_umask(tmp_path):
    import os
    import stat

    from geokit.checkpoint import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        os.umask(0o077)
        atomic_write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o600


def test_a_full_or_read_only_folder_is_detected_before_the_work(tmp_path, pairs_root, monkeypatch):
    import os
    import shutil

    from geokit import training

    cfg = config.load(
        None,
        [
            f"{k}={v}"
            for k, v in {
                "encoder.name": "convnext",
                "encoder.model": "convnext_atto",
                "encoder.pretrained": "false",
                "loss.name": "infonce",
                "sampler.name": "random",
                "dataset.name": "pairs",
                "dataset.root": str(pairs_root),
                "dataset.query_size": "[32, 128]",
                "dataset.reference_size": "[32, 32]",
                "train.batch_size": 8,
                "train.workers": 0,
            }.items()
        ],
    )
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=10 << 20))
    with pytest.raises(GeokitError, match="has 10 MiB free, but the checkpoints of this model need about"):
        training.train(cfg, tmp_path / "full")
    assert not (tmp_path / "full" / "metrics.jsonl").exists()
    monkeypatch.undo()
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        with pytest.raises(GeokitError, match="cannot write to the output folder"):
            training.train(cfg, ro / "run")


def test_pairs_that_cannot_all_be_batched_are_reported():
    from geokit.engine import max_full_batches

    # 13 pairs on 4 references, batches of 4 distinct references: only 1 full batch
    assert max_full_batches(np.array([0] * 10 + [1, 2, 3]), 4) == 1
    assert max_full_batches(np.array([0, 0, 1, 1, 2, 2, 3, 3]), 4) == 2
    assert max_full_batches(np.array([0] * 16000 + list(range(1, 100))), 32) == 3
    assert max_full_batches(np.array([0, 0, 0]), 2) == 0


# --------------------------------------------------------------- 4. batch packing stays O(N log N)


def _pack(cls, train, bs, ops, last):
    p = cls(train, bs)
    for kind, i in ops:
        if kind == 0:
            p.add_or_wait(i)
        elif kind == 1:
            p.add(i)
        else:
            p.waiting.extend([i])
    return p.finish(last)


def test_packing_gives_the_same_batches_as_the_simple_queue():
    from geokit.data import TrainSet
    from geokit.sampling import BatchPacker
    from geokit.testing import QueuePacker  # the simple queue BatchPacker replaced

    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(2, 60))
        n_refs = int(rng.integers(1, n + 1))
        conf = None
        if rng.random() < 0.4:  # declared conflicts (VIGOR semi-positives)
            conf = np.full((n, 2), -1)
            m = rng.random((n, 2)) < 0.3
            conf[m] = rng.integers(0, n_refs, m.sum())
        train = TrainSet(
            [f"q{i}" for i in range(n)],
            [f"r{j}" for j in range(n_refs)],
            rng.integers(0, n_refs, n),
            pair_conflicts=conf,
        )
        ops = [(int(rng.choice(3, p=[0.7, 0.2, 0.1])), int(i)) for i in rng.permutation(n)]
        bs, last = int(rng.integers(2, 9)), ("keep", "drop")[int(rng.integers(2))]
        want, got = _pack(QueuePacker, train, bs, ops, last), _pack(BatchPacker, train, bs, ops, last)
        assert [b.tolist() for b in got] == [b.tolist() for b in want]


def test_packing_many_pairs_of_one_reference_is_fast():
    import time

    from geokit.data import TrainSet
    from geokit.sampling import pack_batches

    ref = np.r_[np.zeros(16000, np.int64), np.arange(1, 100)]  # 16,000 rows share reference 0
    train = TrainSet([""] * len(ref), [""] * 100, ref)
    t0 = time.perf_counter()
    batches = pack_batches(np.random.default_rng(0).permutation(len(ref)), train, 32)
    assert time.perf_counter() - t0 < 10  # the queue it replaced: minutes (quadratic)
    assert len(batches) == 3 and all(len(set(ref[b].tolist())) == 32 for b in batches)


# --------------------------------------------------------------- 1. checkpoint and index records

GOOD_RECORD = {
    "encoder": {"name": "convnext", "model": "convnext_atto", "pretrained": False},
    "embedding_dim": 320,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "query_size": [32, 128],
    "reference_size": [32, 32],
}


@pytest.mark.parametrize(
    "change, key",
    [
        ({"query_size": [12000, 12000]}, "query_size"),  # would allocate gigabytes per photo
        ({"reference_size": [0, 32]}, "reference_size"),
        ({"std": [0, 0.2, 0.2]}, "std"),  # NaN scores
        ({"mean": [float("nan"), 0, 0]}, "mean"),
        ({"embedding_dim": 10**9}, "embedding_dim"),
        ({"encoder": "convnext"}, "encoder"),
    ],
)
def test_hostile_checkpoint_records_are_refused_before_anything_is_built(tmp_path, change, key):
    import torch

    from geokit.checkpoint import save_weights
    from geokit.index import load_encoder

    path = tmp_path / "evil.safetensors"
    save_weights(path, {"encoder.x": torch.zeros(1)}, {**GOOD_RECORD, **change})
    with pytest.raises(GeokitError, match=f"the checkpoint record's '{key}' is") as err:
        load_encoder(path)
    assert len(str(err.value)) < 500


def test_a_deeply_nested_record_is_a_clear_error(tmp_path):
    from safetensors.numpy import save_file

    from geokit.checkpoint import read_record

    path = tmp_path / "deep.safetensors"
    save_file({"x": np.zeros(1, np.float32)}, str(path), metadata={"geokit": "[" * 100000 + "]" * 100000})
    with pytest.raises(GeokitError, match="not valid JSON"):
        read_record(path)


def _index_with_paths(tmp_path, paths, references=None):
    from geokit.index import IndexSpec, build_index

    x = np.eye(4, dtype=np.float32)[: len(paths)]
    meta = {"references": references} if references else {}
    ix = build_index(
        lambda pos: x[pos], len(paths), 4, IndexSpec("flat"), paths=paths, latlon=np.zeros((len(paths), 2)), meta=meta
    )
    ix.save(tmp_path / "x.index")
    return tmp_path / "x.index"


def test_index_tile_paths_stay_inside_the_gallery(tmp_path):
    from geokit.index import GeoIndex

    gallery = tmp_path / "tiles"
    csv_path = str(gallery / "references.csv")
    ok = _index_with_paths(tmp_path, [str(gallery / "a.png"), str(gallery / "sub" / "b.png")], csv_path)
    assert GeoIndex.load(ok).tiles_root == str(gallery)
    for bad in (["/etc/passwd"], [str(gallery / ".." / ".." / "secret.png")]):
        path = _index_with_paths(tmp_path, [str(gallery / "a.png"), *bad], csv_path)
        with pytest.raises(GeokitError, match=r"tile path 2 .* is outside the gallery folder .*--allow-outside"):
            GeoIndex.load(path)
        assert len(GeoIndex.load(path, allow_outside=True)) == 2  # the user says so
    spread = _index_with_paths(tmp_path, ["/etc/a.png", "/home/b.png"], "some.cfg (dataset test)")
    with pytest.raises(GeokitError, match="not in one gallery folder"):
        GeoIndex.load(spread)
    with pytest.raises(GeokitError, match="outside the gallery folder"):
        GeoIndex.load(spread, tiles_root="/etc")
    climbing = _index_with_paths(tmp_path, ["t/a.png", "../../b.png"])
    with pytest.raises(GeokitError, match="tile path 2 .* leaves the folder"):
        GeoIndex.load(climbing)


def test_index_search_parameters_are_bounded(tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    from geokit.index import META_KEY, GeoIndex

    path = _index_with_paths(tmp_path, ["t/a.png", "t/b.png"])
    with safe_open(str(path), framework="numpy") as fh:
        meta = json.loads(fh.metadata()[META_KEY])
    meta["params"] = {"ef_search": 10**12}
    save_file(load_file(str(path)), str(path), metadata={META_KEY: json.dumps(meta)})
    with pytest.raises(GeokitError, match="search parameter ef_search out of range"):
        GeoIndex.load(path)


def test_locate_bounds_top_k_before_allocating(tmp_path):
    from geokit.retrieval.locate import Localizer

    loc = Localizer.__new__(Localizer)  # only the argument checks of locate(), no model needed
    with pytest.raises(GeokitError, match="whole number ≥ 1"):
        loc.locate(["a.jpg"], k=0)
    with pytest.raises(GeokitError, match="view must be 'query' or 'reference'"):
        Localizer(tmp_path / "none.index", view="sideways")


# --------------------------------------------------------------- 3/4. paths stay in roots; suspicious data


def _pairs(root, **opts):
    from geokit.registry import create

    return create("dataset", "pairs", {"root": str(root), "query_size": [32, 128], "reference_size": [32, 32], **opts})


def _verify(root, *extra):
    import json

    from geokit.cli._datasets import datasets

    cli.add_command(datasets)  # as geokit's main() does
    res = CliRunner().invoke(cli, ["datasets", "verify", "pairs", "--root", str(root), "--json", *extra])
    return res, json.loads(res.output)


@pytest.fixture
def small_pairs(tmp_path):
    from geokit.testing import make_pairs_dataset

    return make_pairs_dataset(tmp_path / "data", n_train=6, n_test=4)


def test_csv_paths_that_leave_the_root_are_refused_naming_the_line(small_pairs, tmp_path):
    import shutil

    outside = tmp_path / "secret.png"
    shutil.copy(small_pairs / "train" / "r0000.png", outside)
    lines = (small_pairs / "train.csv").read_text().splitlines()
    lines[2] = lines[2].replace("train/q0001.png", "../secret.png")
    lines[4] = lines[4].replace("train/r0003.png", str(outside))
    (small_pairs / "train.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(
        GeokitError, match=r"train.csv line 3: path ../secret.png is absolute or leaves the dataset root"
    ):
        _pairs(small_pairs).train_set()
    assert len(_pairs(small_pairs, allow_outside_root=True).train_set()) == 6  # the user says so
    res, report = _verify(small_pairs)
    assert res.exit_code == 1
    bad = [(p["line"], p["category"]) for p in report["problems"] if p["severity"] == "error"]
    assert bad == [(3, "path outside root"), (5, "path outside root")]


def test_benchmark_listed_paths_stay_in_the_root(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from dataset_layouts import make_cvusa

    from geokit.registry import create
    from geokit.verify import Problems, collecting

    make_cvusa(tmp_path / "cvusa")
    split = tmp_path / "cvusa" / "splits" / "train-19zl.csv"
    lines = split.read_text().splitlines()
    lines[1] = lines[1].replace("streetview/", "../../streetview/", 1)
    split.write_text("\n".join(lines) + "\n")
    ds = create("dataset", "cvusa", {"root": str(tmp_path / "cvusa"), "query_size": [8, 32], "reference_size": [8, 8]})
    with pytest.raises(GeokitError, match="train-19zl.csv line 2: path .* leaves the dataset root"):
        ds.train_set()
    with collecting(Problems()) as probs:
        create(
            "dataset", "cvusa", {"root": str(tmp_path / "cvusa"), "query_size": [8, 32], "reference_size": [8, 8]}
        ).train_set()
    assert [p.category for p in probs] == ["path outside root"]


def test_a_csv_that_is_not_utf8_is_one_clear_error(small_pairs):
    data = (small_pairs / "test.csv").read_bytes().replace(b"test/q0002.png", b"test/q\xe90002.png")
    (small_pairs / "test.csv").write_bytes(data)
    with pytest.raises(GeokitError, match=r"test.csv line 4: not UTF-8 text \(byte 0xe9"):
        _pairs(small_pairs).eval_set()
    from geokit.cli._datasets import datasets

    cli.add_command(datasets)
    res = CliRunner().invoke(cli, ["datasets", "verify", "pairs", "--root", str(small_pairs)])
    assert res.exit_code == 1 and "not UTF-8" in res.output and "Traceback" not in res.output


def test_suspicious_rows_are_reported(small_pairs, caplog):
    lines = (small_pairs / "train.csv").read_text().splitlines()
    _q, _r = lines[1].split(",")[:2]
    lines.append(lines[1])  # line 8 duplicates line 2
    lines.append(lines[2].replace(lines[2].split(",")[0], lines[2].split(",")[1], 1))  # query == reference
    (small_pairs / "train.csv").write_text("\n".join(lines) + "\n")
    test = (small_pairs / "test.csv").read_text().splitlines()
    ref = test[1].split(",")[1]
    rows = [f"{t.split(',')[0]},{ref}," + ",".join(test[1].split(",")[2:]) for t in test[1:]] * 3
    (small_pairs / "test.csv").write_text("\n".join([test[0], *rows]) + "\n")  # 12 queries, one reference
    res, report = _verify(small_pairs)
    warns = {
        (p["line"], p["message"].split(":")[0].split(" (")[0])
        for p in report["problems"]
        if p["category"] == "suspicious data"
    }
    assert (8, "duplicate row") in warns and (9, "the query is its own reference") in warns
    assert any("12 of the 12 test queries share one reference" in p["message"] for p in report["problems"])
    assert res.exit_code == 0  # legal: warnings only
    _pairs(small_pairs).train_set()  # outside verify: logged, not fatal
    assert "duplicate row" in caplog.text


def test_verify_reports_suspicious_data_of_any_dataset():
    from geokit.data import EvalSet, TrainSet
    from geokit.verify import suspicious_data

    tr = TrainSet(["a", "b", "a", "r1"], ["r0", "r1"], np.array([0, 1, 0, 1]))
    es = EvalSet(
        [f"q{i}" for i in range(20)],
        ["r0", "r1"],
        query_labels=np.r_[np.zeros(15, int), np.ones(5, int)],
        reference_labels=np.arange(2),
        name="test",
    )
    found = [p.message for p in suspicious_data(tr, [es])]
    assert found[0].startswith("1 training pairs repeat another pair")
    assert found[1].startswith("1 training pairs have the query image as their reference")
    assert found[2].startswith("15 of the 20 test queries share one reference")


def test_faiss_too_small_training_sets_are_one_paragraph():
    from geokit.index import IndexSpec, build_index

    x = np.eye(100, 32, dtype=np.float32)
    x[:, 0] = 1
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for spec, msg in (
        (IndexSpec("ivfpq", nlist=4, m=8), "at least 256 training vectors"),
        (IndexSpec("ivf", nlist=4, train_size=2), "training sample of 2 vectors is smaller than nlist=4"),
    ):
        with pytest.raises(GeokitError, match=msg):
            build_index(lambda p: x[p], 100, 32, spec, paths=[str(i) for i in range(100)], latlon=np.zeros((100, 2)))


def test_unknown_devices_and_disk_errors_are_one_paragraph(tmp_path, monkeypatch):
    from geokit.runtime import select_device

    with pytest.raises(GeokitError, match="unknown device 'banana'"):
        select_device("banana")
    with pytest.raises(GeokitError, match="config key 'train.dist_timeout'"):
        config.load(write(tmp_path, tiny_config(tmp_path)), ["train.dist_timeout=1e300"])

    def full(*a, **k):
        import errno

        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "m.json"))

    monkeypatch.setattr("geokit.config.load", full)
    res = CliRunner().invoke(cli, ["config", "show", "--config", "x.yaml"])
    assert res.exit_code == 2 and "No space left on device" in res.output and "Traceback" not in res.output


def test_a_sampler_that_leaves_most_pairs_out_is_reported(caplog):
    from geokit.data import TrainSet
    from geokit.engine import max_full_batches
    from geokit.registry import create
    from geokit.sampling import CheckedSampler, EpochContext

    # the audit's case: 1,000 pairs on 5 references and 31 pairs of their own; batches of 32
    ref = np.r_[np.repeat(np.arange(5), 200), np.arange(5, 36)]
    train = TrainSet([f"q{i}" for i in range(len(ref))], [f"r{j}" for j in range(36)], ref)
    assert max_full_batches(ref, 32) == 1  # 5 + 31 distinct references fill one batch, never two
    ctx = EpochContext(epoch=1, epochs=1, batch_size=32, seed=0, train=train)
    batches = CheckedSampler(create("sampler", "random"), "sampler 'random'").batches(ctx)
    assert sum(len(b) for b in batches) == 32
    assert (
        "epoch 1: sampler 'random' placed 32 of the 1031 training pairs in its 1 batches (999 left out)" in caplog.text
    )


@pytest.mark.slow
def test_training_on_pairs_that_cannot_all_be_batched_says_so_and_plans_the_schedule(tmp_path):
    from geokit.testing import make_pairs_dataset

    root = make_pairs_dataset(tmp_path / "d", n_train=16, n_test=4)
    lines = (root / "train.csv").read_text().splitlines()
    first = lines[1].split(",")
    # rows 2-12 look at the first row's reference (same tile, same lat/lon): 16 pairs, 5 references
    lines[2:13] = [",".join([ln.split(",")[0], *first[1:]]) for ln in lines[2:13]]
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    cfg = write(tmp_path, tiny_config(root, train={"epochs": 1, "batch_size": 4, "warmup_epochs": 1}))
    res = _train(cfg, tmp_path / "run")
    assert res.exit_code == 0, res.output
    log = (tmp_path / "run" / "train.log").read_text()
    assert (
        "only 1 batches of 4 pairs with distinct references can be formed from 16 training pairs with 5 references"
        in log
        and "planned for 1 steps per epoch" in log
    )
    assert "placed 4 of the 16 training pairs" in log


def test_benchmark_text_files_that_are_not_utf8_name_the_line(tmp_path):
    from geokit_plugins.datasets._benchmark_common import read_text_lines

    path = tmp_path / "splits.txt"
    path.write_bytes(b"a.jpg\r\nb.jpg\r\n\r\nc\xff.jpg\r\n")
    with pytest.raises(GeokitError, match=r"splits.txt line 4: not UTF-8 text \(byte 0xff"):
        read_text_lines(path, "splits.txt")
    path.write_bytes(b"a.jpg\r\nb.jpg\r\n\r\nc.jpg\x0c\r\n")
    assert read_text_lines(path, "splits.txt") == [(1, "a.jpg"), (2, "b.jpg"), (4, "c.jpg")]


def test_config_input_sizes_are_bounded_before_anything_is_allocated(tmp_path):
    from geokit.config import resolve
    from geokit.model import build
    from geokit.testing import make_pairs_dataset, tiny_config

    root = make_pairs_dataset(tmp_path / "d", n_train=4, n_test=2)
    with pytest.raises(GeokitError, match=r"dataset.query_size \[12000, 12000\].*1 to 4096"):
        build(resolve(tiny_config(root, dataset={"query_size": [12000, 12000]})))
