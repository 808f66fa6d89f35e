"""Small builders shared by tests: tiny real-data configs on the embedded Fashion-MNIST subset, a
crash-and-resume harness and a SetupContext for building methods outside a run."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import torch
from torch import nn

from datakd.api.context import SetupContext
from datakd.checkpoint import load_checkpoint
from datakd.config import RunConfig, config_from_dict
from datakd.data.loaders import Normalizer
from datakd.engine.build import build_trainer
from datakd.engine.trainer import Trainer

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


class Crash(RuntimeError):
    """Raised by `crash_and_resume` to stop a run the way a kill would (after its last checkpoint)."""


def crash_and_resume(
    cfg: RunConfig,
    mode: str,
    crash_at: int,
    monkeypatch: Any,
    owner: Any = None,
    attr: str = "train_step",
) -> tuple[dict[str, Any], Trainer]:
    """Run `cfg` until the `crash_at`-th call of `owner.attr` (default `Trainer.train_step`) raises, then
    resume from last.pt and finish. Returns the checkpoint the resume started from and the finished trainer.
    """
    import pytest

    owner = Trainer if owner is None else owner
    original = getattr(owner, attr)
    calls = {"n": 0}

    def failing(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise Crash
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, attr, failing)
    crashed = build_trainer(cfg, mode)
    with pytest.raises(Crash):
        crashed.fit()
    monkeypatch.setattr(owner, attr, original)
    state = load_checkpoint(crashed.run_dir / "last.pt")
    resumed = build_trainer(cfg, mode, resume=True)
    resumed.fit()
    return state, resumed


def setup_context(
    student: nn.Module,
    teacher: nn.Module | None,
    sample: torch.Tensor,
    *,
    num_classes: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    num_train: int = 0,
    train_labels: torch.Tensor | None = None,
    batch_size: int = 8,
    steps_per_epoch: int = 1,
    total_epochs: int = 1,
    normalizer: Normalizer | None = None,
) -> SetupContext:
    """A SetupContext for building loss terms outside a run (CPU; `sample` gives the shapes)."""
    return SetupContext(
        student=student,
        teacher=teacher,
        num_classes=num_classes,
        num_train=num_train,
        train_labels=torch.zeros(0, dtype=torch.long) if train_labels is None else train_labels,
        sample_images=sample,
        device=torch.device("cpu"),
        batch_size=batch_size,
        steps_per_epoch=steps_per_epoch,
        total_epochs=total_epochs,
        normalizer=normalizer,  # type: ignore[arg-type]
        mean=mean,
        std=std,
    )


def communicate_or_kill(process: subprocess.Popen, timeout: float) -> str:
    """Wait for a process started with `start_new_session=True` and return its stderr; whatever happens
    (a timeout, a failed assertion), its whole process group is gone afterwards, so no leftover (a Ray
    raylet, a torchrun rank) outlives the test and signals the next one."""
    try:
        _, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return err
