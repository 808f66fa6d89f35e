"""Small builders shared by tests: tiny real-data configs on the embedded Fashion-MNIST subset."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from datakd.config import RunConfig, config_from_dict
from datakd.engine.build import build_trainer

TINY_DATA: dict[str, Any] = {
    "dataset": "quickstart",
    "train_subset": 512,
    "test_subset": 200,
    "batch_size": 64,
    "eval_batch_size": 200,
    "augment": "crop_flip",
    "crop_padding": 2,
}


def tiny_config(out: Path, **changes: Any) -> RunConfig:
    """A 2-epoch CE run of resnet8 on 512 real images (28×28 grayscale); `changes` update top-level keys."""
    values: dict[str, Any] = {
        "name": "tiny",
        "seed": 0,
        "device": "cpu",
        "out": str(out),
        "epochs": 2,
        "quiet": True,
        "data": copy.deepcopy(TINY_DATA),
        "student": {"name": "resnet8", "kwargs": {"in_channels": 1}},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "multistep", "milestones": [1], "gamma": 0.1},
        "loss": {"ce": {"weight": 1.0}},
        "engine": {"tensorboard": False},
    }
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    return config_from_dict(values)


def train_tiny_teacher(out: Path, epochs: int = 2, model: str = "resnet14") -> Path:
    """Train a small teacher on the tiny split and return its checkpoint path."""
    cfg = tiny_config(
        out, epochs=epochs, student={"name": model, "kwargs": {"in_channels": 1}}, optim={"lr": 0.1}
    )
    build_trainer(cfg, "train").fit()
    return out / "last.pt"
