"""Shared, cached builders for the TST run tests: an RGB 32×32 teacher and quickly fitted encoders.

Both are built once per test session (module-level cache), whichever TST test file asks first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from datakd.augmenters.tst.encoder_file import FitConfig
from datakd.config import RunConfig
from datakd.engine.build import build_trainer
from datakd.jobs.tst_fit import fit_or_load
from tests.helpers import tiny_config

# Colour ops need RGB: the Fashion-MNIST slice is zero-padded to 32×32 and replicated to 3 channels.
RGB32 = {"pad_to_32": True, "rgb": True}
_CACHE: dict[str, Path] = {}


def _root(factory: pytest.TempPathFactory) -> Path:
    root = factory.getbasetemp() / "tst-shared"
    root.mkdir(exist_ok=True)
    return root


def tst_teacher(factory: pytest.TempPathFactory) -> Path:
    """A ResNet-14 trained 4 epochs on 1,024 real images (about 65 % test top-1)."""
    if "teacher" not in _CACHE:
        out = _root(factory) / "teacher"
        cfg = tiny_config(
            out,
            epochs=4,
            data={"options": RGB32, "train_subset": 1024},
            student={"name": "resnet14", "kwargs": {}},
            optim={"lr": 0.1},
            schedule={"milestones": [3]},
        )
        build_trainer(cfg, "train").fit()
        _CACHE["teacher"] = out / "last.pt"
    return _CACHE["teacher"]


def tst_encoders(factory: pytest.TempPathFactory) -> Path:
    """Stage I through the real code path, kept short (8 iterations per op): enough to run f_DE."""
    if "encoders" not in _CACHE:
        path = _root(factory) / "encoders.pt"
        data = tiny_config(path.parent / "unused", data={"options": RGB32}).data
        fit = FitConfig(max_iters=8, lr=1e-2, batch_size=32, eval_images=32, subset=512)
        fit_or_load(path, data, fit, torch.device("cpu"))
        _CACHE["encoders"] = path
    return _CACHE["encoders"]


def tst_config(
    out: Path, teacher: Path, encoders: Path | None, augmenter: dict[str, Any] | None = None, **changes: Any
) -> RunConfig:
    """A TST distillation of ResNet-8 (CE + KD at τ = 4, w = 1) with a Stage II call at epoch 1."""
    values: dict[str, Any] = {
        "epochs": 3,
        "data": {"options": RGB32, "train_subset": 512},
        "student": {"name": "resnet8", "kwargs": {}},
        "teacher": {"checkpoint": str(teacher)},
        "optim": {"lr": 0.05},
        "schedule": {"milestones": [2]},
        "loss": {"ce": {"weight": 1.0}, "kd": {"weight": 1.0, "temperature": 4.0}},
        "augmenter": {
            "name": "tst",
            "encoders": None if encoders is None else str(encoders),
            **(augmenter or {}),
        },
        "events": [{"name": "tst_search", "at": [1], "epochs": 1, "max_steps": 4}],
    }
    values.update(changes)
    return tiny_config(out, **values)
