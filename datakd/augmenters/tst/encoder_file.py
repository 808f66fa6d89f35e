"""The TST encoders file: the Stage I settings (`FitConfig`), and reading, writing and checking the file.

The ``tst`` augmenter reads the file in `setup` and validates its ``fit`` option with `FitConfig`; the
Stage I job that writes the file is `datakd.jobs.tst_fit` (`datakd tst fit`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datakd.augmenters.tst.ops import AFFINE_OPS, MAGNITUDE_OPS
from datakd.checkpoint import atomic_save, load_checkpoint
from datakd.errors import ConfigError, DatakdError, choice_error

FILE_FORMAT = "datakd-tst-encoders"
# Version 2: spatial encoders fill uncovered pixels with black, as their Stage I targets do; version 1 filled
# them with normalised 0 (the mean colour). Both load; `datakd tst fit` refits a version-1 file (its cache
# key holds the version), and a run given a version-1 file keeps the fill it was fitted with.
FILE_VERSION = 2
READABLE_VERSIONS = (1, 2)
FILLS = {1: "zero", 2: "black"}


@dataclass
class FitConfig:
    """Stage I settings (defaults = the authors' CIFAR settings)."""

    epochs_spatial: int = 10
    epochs_color: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay_spatial: float = 0.01
    weight_decay_color: float = 0.0
    gamma: float = 0.999
    # Fit on a stratified subset of the training split: a count, or a fraction < 1 (ImageNet code: 0.1).
    subset: float | None = None
    # Crop size for file datasets (the ImageNet code fits at 56×56); in-memory datasets keep their size.
    image_size: int | None = None
    # Stop each op after this many iterations (quick fits, tests); None = the full epochs.
    max_iters: int | None = None
    eval_images: int = 256
    seed: int = 0
    ops: list[str] = field(default_factory=lambda: list(MAGNITUDE_OPS))

    def __post_init__(self) -> None:
        for name in ("epochs_spatial", "epochs_color", "batch_size", "eval_images"):
            value = getattr(self, name)
            smallest = 0 if name.startswith("epochs") else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < smallest:
                raise ConfigError(f"tst.fit.{name} must be an integer >= {smallest}, got {value!r}")
        if self.lr <= 0 or not 0 < self.gamma <= 1:
            raise ConfigError(f"tst.fit: lr must be > 0 and gamma in (0, 1], got {self.lr}, {self.gamma}")
        if self.max_iters is not None and self.max_iters < 1:
            raise ConfigError(f"tst.fit.max_iters must be at least 1, got {self.max_iters}")
        if self.subset is not None and self.subset <= 0:
            raise ConfigError(f"tst.fit.subset must be a positive count or fraction, got {self.subset}")
        self.ops = list(self.ops)
        for op in self.ops:
            if op not in MAGNITUDE_OPS:
                raise choice_error("tst.fit op", op, MAGNITUDE_OPS, ConfigError)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> FitConfig:
        """Build from a recipe mapping; unknown keys fail with the valid ones."""
        values = dict(values or {})
        names = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in names:
                raise choice_error("tst.fit key", key, names, ConfigError)
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(f"tst.fit: {exc}") from None

    def epochs_for(self, op: str) -> int:
        return self.epochs_spatial if op in AFFINE_OPS else self.epochs_color

    def weight_decay_for(self, op: str) -> float:
        return self.weight_decay_spatial if op in AFFINE_OPS else self.weight_decay_color


def save_encoders(payload: dict[str, Any], path: str | Path) -> None:
    atomic_save(payload, path)


def load_encoders(path: str | Path) -> dict[str, Any]:
    """Read an encoders file written by `datakd tst fit`, with a one-line error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise DatakdError(
            f"TST encoders file {str(path)!r} not found; fit it first with "
            f"`datakd tst fit --config RECIPE --data-root DIR` (writes augmenter.encoders)"
        )
    payload = load_checkpoint(path)
    if payload.get("format") != FILE_FORMAT:
        raise DatakdError(f"{str(path)!r} is not a TST encoders file (written by `datakd tst fit`)")
    if payload.get("version") not in READABLE_VERSIONS:
        raise DatakdError(
            f"TST encoders file {str(path)!r} has version {payload.get('version')}, this datakd reads "
            f"{', '.join(map(str, READABLE_VERSIONS))}; fit it again"
        )
    return payload


def fill_of(payload: dict[str, Any]) -> str:
    """How the file's spatial encoders were fitted to fill uncovered pixels: "black" or "zero" (v1)."""
    return str(payload.get("fill", FILLS[int(payload["version"])]))


def check_compatible(
    payload: dict[str, Any], mean: tuple[float, ...], std: tuple[float, ...], channels: int, source: str
) -> None:
    """Encoders act on normalised tensors: the run's normalisation and channels must be the fitted ones."""
    data = payload["data"]
    same = (
        data["channels"] == channels
        and len(data["mean"]) == len(mean)
        and all(abs(a - b) < 1e-4 for a, b in zip(data["mean"], mean))
        and all(abs(a - b) < 1e-4 for a, b in zip(data["std"], std))
    )
    if not same:
        raise DatakdError(
            f"TST encoders {source!r} were fitted on {data['dataset']} ({data['channels']} channels, mean "
            f"{data['mean']}, std {data['std']}), but this run normalises {channels} channels with mean "
            f"{[round(v, 4) for v in mean]}, std {[round(v, 4) for v in std]}; fit encoders for this data"
        )
