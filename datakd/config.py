"""Run configuration: typed sections, YAML in and out, dotted ``key=value`` overrides.

Sections are dataclasses so that a misspelt key fails at load time with the list of valid keys, instead of
being silently ignored. Method options (loss terms, augmenter, target transform, events) stay free-form dicts
here and are checked against the constructor of the registered class when the run is built.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from datakd.errors import ConfigError, choice_error
from datakd.validation import validate_config


@dataclass
class DataConfig:
    """Which data, how it is split, batched and augmented before any method-specific augmenter."""

    dataset: str = "cifar100"
    root: str | None = None
    download: bool = False
    batch_size: int = 64
    eval_batch_size: int = 256
    # "auto" keeps small datasets as a uint8 tensor on the device; "workers" uses a torch DataLoader.
    loader: str = "auto"
    workers: int = 4
    # Base augmentation applied by the loader: default (the dataset's own), crop_flip (pad + random crop
    # + h-flip), flip, none,
    # or imagenet (RandomResizedCrop + flip; worker loader only).
    augment: str = "default"
    crop_padding: int = 4
    image_size: int = 224
    # Hold out this many training images (seeded) as a validation split for tuning; 0 = evaluate on test.
    val_size: int = 0
    train_subset: int | None = None
    test_subset: int | None = None
    # Seed of the validation hold-out and the subsets (default: the run seed), so runs with different
    # seeds can share one split (e.g. the members of a population-based search).
    split_seed: int | None = None
    # Draw `train_subset` from the whole training split first (the same images as a run without
    # `val_size`) and hold `val_size` out of the images it left: the validation split then never
    # overlaps the subset (a search that validates on images its subset-trained students never see).
    val_outside_subset: bool = False
    # Dataset-specific options (e.g. fashion-mnist: pad_to_32, rgb).
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    """A network by zoo name, optionally initialised or fixed from a checkpoint."""

    name: str | None = None
    checkpoint: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    # For the student: copy matching weights from the teacher before training (quantised students).
    init_from_teacher: bool = False
    # For a detector student: copy the teacher's neck (FPN) and head where shapes match (FGD's
    # init_student); off by default, recorded in config.yaml and summary.json.
    init_neck_head: bool = False


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    # Exempt normalisation weights and all biases from weight decay.
    no_decay_norm_bias: bool = False
    # Multiply the learning rate by global_batch / base_batch (linear scaling rule) when base_batch is set.
    base_batch: int | None = None


@dataclass
class ScheduleConfig:
    name: str = "multistep"
    milestones: list[float] = field(default_factory=lambda: [150, 180, 210])
    gamma: float = 0.1
    step_size: float = 30
    eta_min: float = 0.0  # absolute lr at the end of cosine/linear/poly decay
    power: float = 0.9  # poly decay (segmentation, mmseg): factor (1 - t)^power
    # Cosine/linear: reach eta_min this many epochs after the schedule starts, then stay there (EffDstl's
    # stage 1 decays over 240 of 300 epochs); None = decay until the end of training.
    decay_epochs: float | None = None
    warmup_epochs: float = 0.0
    warmup_start_factor: float = 0.0
    # Seed 001's epoch-scaling rule: epochs × scale and every decay epoch × scale.
    scale: float = 1.0


@dataclass
class EngineConfig:
    """How the loop runs: precision, memory format, compilation, determinism, checkpoints, logging."""

    amp: bool = False
    # true, false or auto: auto picks what is faster for the device and the run's length
    # (datakd/engine/fastpath.py; compile only pays off for long runs).
    channels_last: bool | str = "auto"
    compile: bool | str = "auto"
    deterministic: bool = False
    grad_clip_norm: float | None = None
    checkpoint_every_iters: int = 0
    # Also checkpoint mid-epoch when this many minutes passed since the last checkpoint (0 = off).
    checkpoint_every_minutes: float = 0.0
    # Signals taken as a preemption notice: finish the step, checkpoint, exit with code 75
    # (docs/reliability.md).
    preempt_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])
    eval_every: int = 1
    save_best: bool = True
    tensorboard: bool = True
    # Abort on NaN/Inf losses (the last good checkpoint is kept).
    nan_guard: bool = True
    # Under DDP, batch-norm statistics over the global batch (torch SyncBatchNorm on GPU, an equivalent
    # all-reduce on CPU/gloo), so N processes train like one process with the same global batch.
    sync_bn: bool = True


@dataclass
class RunConfig:
    name: str = "run"
    # classification | detection | segmentation: how batches are collated, models run and evaluated.
    task: str = "classification"
    seed: int = 0
    device: str = "auto"
    out: str | None = None
    epochs: int = 240
    quiet: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    student: ModelConfig = field(default_factory=ModelConfig)
    teacher: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    # name -> {type: registered loss term (default: the name), weight, views, ...options}
    loss: dict[str, dict[str, Any]] = field(default_factory=lambda: {"ce": {"weight": 1.0}})
    augmenter: dict[str, Any] = field(default_factory=lambda: {"name": "none"})
    target_transform: dict[str, Any] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    engine: EngineConfig = field(default_factory=EngineConfig)
    # Published numbers this recipe reproduces, for `datakd report` (free-form metadata).
    reference: dict[str, Any] | None = None

    @property
    def total_epochs(self) -> int:
        return round(self.epochs * self.schedule.scale)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data. Keys added after the recipe digests were frozen
        (`ADDED_KEYS`) appear only when they differ from their default, so every classification recipe
        resolves to the same document (tests/test_recipe_digests.py) and loads back identically."""
        values = _plain(dataclasses.asdict(self))
        for path, default in ADDED_KEYS:
            *parents, leaf = path
            section = values
            for key in parents:
                section = section[key]
            if section.get(leaf) == default:
                del section[leaf]
        return values


# (key path, default) of the keys that joined RunConfig after the recipe digests were frozen (the
# detection/segmentation tasks, then the PBA search's validation split outside the student subset).
ADDED_KEYS: tuple[tuple[tuple[str, ...], Any], ...] = (
    (("task",), "classification"),
    (("student", "init_neck_head"), False),
    (("teacher", "init_neck_head"), False),
    (("schedule", "power"), 0.9),
    (("data", "val_outside_subset"), False),
)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check `value` against a (simple) type annotation, converting ints to floats and lists to tuples."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(annotation, value, where)
    if annotation is Any:
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or (args and len(value) != len(args)):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise choice_error(f"config key in {where or 'the recipe'}:", key, names, ConfigError)
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}" if where else key)
    return cls(**kwargs)


def config_from_dict(values: dict[str, Any]) -> RunConfig:
    """Validate a nested mapping (e.g. parsed YAML) into a RunConfig."""
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(values).__name__}")
    config = _build(RunConfig, values, "")
    for term, options in config.loss.items():
        if not isinstance(options, dict):
            raise ConfigError(f"loss.{term}: expected a mapping of options, got {options!r}")
    if not isinstance(config.augmenter, dict) or "name" not in config.augmenter:
        raise ConfigError("augmenter: expected a mapping with a 'name' key")
    for i, event in enumerate(config.events):
        if not isinstance(event, dict) or "name" not in event:
            raise ConfigError(f"events[{i}]: expected a mapping with a 'name' key, got {event!r}")
    validate_config(config)
    return config


def set_dotted(values: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict, creating intermediate mappings."""
    keys = dotted.split(".")
    if not all(keys):
        raise ConfigError(f"malformed override key {dotted!r}")
    node = values
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        elif isinstance(child, list) and key == "events":
            raise ConfigError(f"override {dotted!r}: index events by position, e.g. events.0.epoch=30")
        if isinstance(child, list):
            raise ConfigError(f"override {dotted!r}: {key!r} is a list")
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section (its value is {child!r})")
        node = child
    node[keys[-1]] = value


def _set_event_override(values: dict[str, Any], dotted: str, value: Any) -> bool:
    keys = dotted.split(".")
    if keys[0] != "events" or len(keys) < 3 or not keys[1].isdigit():
        return False
    events = values.setdefault("events", [])
    index = int(keys[1])
    if index >= len(events):
        raise ConfigError(f"override {dotted!r}: there are only {len(events)} events")
    set_dotted(events[index], ".".join(keys[2:]), value)
    return True


def parse_overrides(pairs: list[str]) -> list[tuple[str, Any]]:
    """Parse ``key=value`` strings; values are read as YAML scalars/lists (``lr=0.1``, ``m=[1,2]``)."""
    parsed = []
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} is not of the form key=value")
        key, raw = pair.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {pair!r}: value is not valid YAML ({exc.problem})") from None
        parsed.append((key.strip(), value))
    return parsed


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """Read a YAML recipe (or start from `base`), apply overrides, validate."""
    values: dict[str, Any] = copy.deepcopy(base) if base else {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections")
        values.update(loaded)
    for key, value in parse_overrides(overrides or []):
        if not _set_event_override(values, key, value):
            set_dotted(values, key, value)
    return config_from_dict(values)


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
