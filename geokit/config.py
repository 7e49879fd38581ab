"""Run configuration: a YAML file, ``--set KEY=VALUE`` overrides, pydantic validation.

Top-level keys: ``seed``, ``encoder``, ``loss``, ``sampler``, ``dataset``, ``train``, ``eval``,
the optional lists ``transforms``, ``metrics`` and ``rerankers``, and the optional ``images``
section (image decoding, :class:`geokit.images.ImageOptions`). Each component section
(and each list item) holds ``name`` plus that component's options, validated by the model the
component registered. Unknown keys and bad values are errors naming the full dotted key path.
The resolved config (every default filled in) is what runs write to ``config.yaml`` and into
checkpoint records.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import JsonDict

from geokit.errors import GeokitError
from geokit.hookspecs import KINDS, LIST_KINDS
from geokit.images import BUILTIN_IMAGE_OPTIONS, ImageOptions
from geokit.registry import format_validation_error, get_registry

# A config is a few kilobytes; these bounds keep a small hostile file (deep nesting, an alias
# "billion laughs" bomb) from costing memory or time, and error messages never expand it.
MAX_YAML_BYTES = 8 * 1024 * 1024
MAX_YAML_DEPTH = 64
MAX_YAML_NODES = 1_000_000  # values after expanding aliases


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-4`` as a string; users mean a number (as YAML 1.2 does).

    Nesting deeper than :data:`MAX_YAML_DEPTH` is refused while composing (before Python's
    recursion limit is reached)."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(None, None, f"nesting deeper than {MAX_YAML_DEPTH} levels", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml(text: str, source: str = "YAML") -> Any:
    """Parse YAML safely and within bounds; a bound exceeded is a :class:`GeokitError`."""
    if len(text) > MAX_YAML_BYTES:
        raise GeokitError(f"{source}: {len(text):,} characters, more than the {MAX_YAML_BYTES:,} a config may have")
    try:
        data = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader subclass
    except (ValueError, OverflowError, RecursionError) as exc:  # e.g. a 5000-digit int, 2001-13-45
        raise yaml.YAMLError(f"a value cannot be read: {_short(str(exc), 120)}") from None
    _check_expanded(data, source)
    return data


def _check_expanded(data: Any, source: str) -> None:
    """Refuse data whose aliases expand beyond :data:`MAX_YAML_NODES` values, or that refer to
    themselves; counted without expanding (shared sub-trees are sized once)."""
    sizes: dict[int, int] = {}
    busy: set[int] = set()

    def size(x: Any) -> int:
        if not isinstance(x, (dict, list)):
            return 1
        key = id(x)
        if key in sizes:
            return sizes[key]
        if key in busy:
            raise GeokitError(
                f"{source}: an alias refers to the value that contains it (a recursive "
                "YAML structure); configs must be plain trees"
            )
        busy.add(key)
        items = list(x.keys()) + list(x.values()) if isinstance(x, dict) else x
        total = 1
        for v in items:
            total += size(v)
            if total > MAX_YAML_NODES:
                raise GeokitError(
                    f"{source}: its aliases expand to more than {MAX_YAML_NODES:,} "
                    "values (an alias bomb?); configs are small plain trees"
                )
        busy.discard(key)
        sizes[key] = total
        return total

    size(data)


# Marks a field that may change when a run resumes (it does not change the result, or it rescues
# a run: skipping bad images, gradient caching after running out of memory); see geokit.engine.
RESUME_FREE_FIELD: JsonDict = {"resume": "free"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TrainConfig(_Strict):
    """``train:`` section."""

    epochs: int = Field(40, ge=1, le=100_000)
    batch_size: int = Field(128, ge=2, description="pairs per global batch, across all ranks")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_epochs: float = Field(1.0, ge=0, le=100_000)
    clip_value: float | None = Field(100.0, gt=0, description="gradient value clipping; null: off")
    workers: int | None = Field(
        None,
        ge=0,
        le=1024,
        description="DataLoader workers; null: 0 on CPU, 4 on GPU",
        json_schema_extra=RESUME_FREE_FIELD,
    )
    amp: bool | None = Field(None, description="mixed precision; null: on for CUDA, off on CPU")
    amp_dtype: Literal["float16", "bfloat16"] | None = Field(
        None,
        description="autocast dtype when amp is on: float16 (with a loss scaler, initial scale 2^10, "
        "as the released Sample4Geo code), bfloat16 (no scaler); null: bfloat16 where the device has it, "
        "else float16",
    )
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|mps|cuda(:[0-9]{1,3})?)$",
        description="auto, cpu, cuda, cuda:N",
        json_schema_extra=RESUME_FREE_FIELD,
    )
    threads: int | None = Field(
        None, ge=1, le=65536, description="torch CPU threads; null: all cores", json_schema_extra=RESUME_FREE_FIELD
    )
    log_every: int = Field(
        20, ge=1, description="steps between progress log lines", json_schema_extra=RESUME_FREE_FIELD
    )
    eval_every: int = Field(
        0,
        ge=0,
        description="evaluate every N epochs during training (0: off); "
        "on eval.split, else the dataset's 'val' split when it has one; "
        "monitoring only, never used to select a model",
        json_schema_extra=RESUME_FREE_FIELD,
    )
    checkpoint_every: int = Field(
        0,
        ge=0,
        description="also checkpoint every N steps inside an epoch "
        "(0: only at epoch ends); a killed run resumes from the last one",
        json_schema_extra=RESUME_FREE_FIELD,
    )
    grad_cache_chunk: int | None = Field(
        None,
        ge=1,
        description="gradient caching: pairs per forward chunk on each rank (same gradients, less memory); null: off",
        json_schema_extra=RESUME_FREE_FIELD,
    )
    bad_images: Literal["error", "skip"] = Field(
        "error",
        description="an unreadable training image: stop with an error naming it, or skip its pair and count it",
        json_schema_extra=RESUME_FREE_FIELD,
    )
    channels_last: bool | None = Field(
        None, description="channels_last memory format; null: on for CUDA", json_schema_extra=RESUME_FREE_FIELD
    )
    dist_timeout: float = Field(
        1800.0,
        gt=0,
        le=10**7,
        description="seconds a rank waits for the others (DDP) before it fails with an error instead of hanging",
        json_schema_extra=RESUME_FREE_FIELD,
    )


class EvalConfig(_Strict):
    """``eval:`` section."""

    batch_size: int = Field(128, ge=1, description="images per embedding batch", json_schema_extra=RESUME_FREE_FIELD)
    split: str | None = Field(
        None, description="protocol split; null: the dataset's test split", json_schema_extra=RESUME_FREE_FIELD
    )
    chunk_size: int | None = Field(
        None, ge=1, description="queries per retrieval block; null: auto", json_schema_extra=RESUME_FREE_FIELD
    )
    bf16_screen: bool | None = Field(
        None,
        description="score blocks in bfloat16 and re-score exactly what "
        "they cannot decide (same metrics, faster on AMX CPUs); null: on where "
        "the CPU has AMX",
    )


class _Section(BaseModel):
    """A component section before the component's own options are known."""

    model_config = ConfigDict(extra="allow")
    name: str


class _RawConfig(_Strict):
    seed: int = Field(42, ge=0, lt=2**63, description="one seed for weights, sampling and augmentation")
    encoder: _Section | None = None  # presence is checked by resolve(require=...)
    loss: _Section | None = None
    sampler: _Section | None = None
    dataset: _Section | None = None
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    transforms: list[_Section] = []
    metrics: list[_Section] | None = None
    rerankers: list[_Section] = []
    images: ImageOptions = Field(default_factory=ImageOptions)


class Config(BaseModel):
    """A resolved config: train/eval validated, each component's options validated by its model."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    seed: int
    encoder: BaseModel | None = None  # None: a section the command did not need was left out
    loss: BaseModel | None = None
    sampler: BaseModel | None = None
    dataset: BaseModel | None = None
    train: TrainConfig
    eval: EvalConfig
    names: dict[str, str]  # kind -> component name (only the sections present)
    # List kinds (``transforms``, ``metrics``, ``rerankers``): (name, options) in config order.
    # ``metrics`` None: every registered metric that applies to the protocol.
    transforms: list[tuple[str, BaseModel]] = []
    metrics: list[tuple[str, BaseModel]] | None = None
    rerankers: list[tuple[str, BaseModel]] = []
    images: ImageOptions = Field(default_factory=ImageOptions)

    def listed(self, kind: str) -> list[tuple[str, BaseModel]] | None:
        """The configured components of list kind ``kind`` ('transform', 'metric', 'reranker')."""
        return getattr(self, LIST_KINDS[kind])

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as written to config.yaml (paths as strings). List kinds and ``images``
        appear only when set, so configs (and run folders) from before they existed compare equal."""
        out: dict[str, Any] = {"seed": self.seed}
        for kind in KINDS:
            if kind in self.names:
                out[kind] = {"name": self.names[kind], **getattr(self, kind).model_dump(mode="json")}
        out["train"] = self.train.model_dump(mode="json")
        out["eval"] = self.eval.model_dump(mode="json")
        for kind, key in LIST_KINDS.items():
            items = self.listed(kind)
            if items:
                out[key] = [{"name": n, **o.model_dump(mode="json")} for n, o in items]
        images = self.images.model_dump(mode="json")
        if images != BUILTIN_IMAGE_OPTIONS:  # like the lists: absent when at its defaults
            out["images"] = images
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Load a YAML (or JSON) mapping; syntax errors name the file and line."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            raise GeokitError(
                f"config file {path} is {path.stat().st_size:,} bytes, more than the "
                f"{MAX_YAML_BYTES:,} a config may have"
            )
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise GeokitError(f"config file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except FileNotFoundError:
        raise GeokitError(f"config file not found: {path}") from None
    except OSError as exc:
        raise GeokitError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = _yaml(text, str(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise GeokitError(f"invalid YAML in {path}{where}: {_short(str(problem))}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise GeokitError(f"config file {path} must hold a mapping of keys, not {type(data).__name__}")
    return data


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text):,} characters)"


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``KEY=VALUE`` strings; dotted keys, values parsed as YAML scalars."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise GeokitError(f"--set expects KEY=VALUE (e.g. train.lr=1e-4), got {_short(repr(item))}")
        try:
            value = _yaml(raw, f"--set {key}") if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        if isinstance(value, float) and not math.isfinite(value):
            raise GeokitError(f"--set {key}: {raw.strip()[:40]} is not a finite number")
        node = data
        parts = key.split(".")
        if len(parts) > MAX_YAML_DEPTH:
            raise GeokitError(f"--set {_short(key, 80)}: more than {MAX_YAML_DEPTH} levels")
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise GeokitError(f"--set {key}: '{'.'.join(parts[: i + 1])}' is not a section")
            node = nxt
        node[parts[-1]] = value
    return data


def resolve(data: dict[str, Any], *, source: str = "config", require: Sequence[str] = KINDS) -> Config:
    """Validate raw config data into a :class:`Config` (components looked up in the registries).

    :param require: the component sections that must be there (``train``: all four; ``evaluate``:
        ``encoder`` and ``dataset``, or only ``dataset`` with a checkpoint). A section that is not
        required may be left out; it is then ``None`` in the result and absent from ``names``.

    Its ``images:`` options become this process's image options (:func:`geokit.images.configure`):
    every image a run reads, in any engine or worker, is decoded as its config says.
    """
    for kind in require:
        if data.get(kind) is None:
            raise GeokitError(f"{source}: missing config section '{kind}' (with at least 'name')")
    for kind in KINDS:
        sec = data.get(kind)
        if isinstance(sec, str):  # "loss: infonce" shorthand
            data = {**data, kind: {"name": sec}}
    for key in LIST_KINDS.values():
        items = data.get(key)
        if isinstance(items, (str, dict)):  # one item without the list
            items = [items]
        if isinstance(items, list):  # "transforms: [limited_fov]" shorthand
            data = {**data, key: [{"name": x} if isinstance(x, str) else x for x in items]}
    try:
        raw = _RawConfig.model_validate(data)
    except ValidationError as exc:
        raise GeokitError(f"{source}: " + format_validation_error(exc, "", _RawConfig)) from None
    parts: dict[str, Any] = {}
    names: dict[str, str] = {}
    for kind in KINDS:
        section = getattr(raw, kind)
        if section is None:
            continue
        comp = get_registry(kind).get(section.name)
        opts = dict(section.model_extra or {})
        try:
            parts[kind] = comp.parse_options(opts, prefix=kind)
        except GeokitError as exc:
            raise GeokitError(f"{source}: {exc} [{kind} '{comp.name}' from plugin {comp.plugin}]") from None
        names[kind] = comp.name
    lists: dict[str, Any] = {}
    for kind, key in LIST_KINDS.items():
        sections = getattr(raw, key)
        if sections is None:
            lists[key] = None
            continue
        items = []
        for i, section in enumerate(sections):
            comp = get_registry(kind).get(section.name)
            try:
                items.append((comp.name, comp.parse_options(dict(section.model_extra or {}), prefix=f"{key}.{i}")))
            except GeokitError as exc:
                raise GeokitError(f"{source}: {exc} [{kind} '{comp.name}' from plugin {comp.plugin}]") from None
        lists[key] = items
    from geokit.images import configure

    configure(raw.images)
    return Config(seed=raw.seed, train=raw.train, eval=raw.eval, names=names, images=raw.images, **parts, **lists)


def load(
    path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), *, require: Sequence[str] = KINDS
) -> Config:
    """Read ``path`` (may be None: overrides only), apply ``--set`` overrides, validate
    (``require``: the component sections that must be present, see :func:`resolve`)."""
    data = read_yaml(path) if path else {}
    data = apply_overrides(data, overrides)
    return resolve(data, source=str(path) if path else "config", require=require)
