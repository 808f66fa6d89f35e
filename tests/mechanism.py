"""Checks of a method's own mechanism, shared by the training tests (instead of "top-1 above X %", which a
student trained with labels alone also reaches).

* `first_step` runs one real training step and records its views, per-term losses and total, so a test can
  recompute them in float64 (`ce64`, `kd64`).
* `teacher_kl` measures how far a student's predictions are from the teacher's; `ce_twin` trains the same
  student with labels only, same data, seed, optimizer and epochs, as the baseline a distillation method
  must beat on that measure.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from datakd.config import RunConfig
from datakd.engine.build import build_trainer
from datakd.engine.trainer import Trainer


def ce64(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Cross-entropy to hard labels (B) or label distributions (B×K), float64."""
    log_p = F.log_softmax(logits.double(), 1)
    if labels.dim() == 2:
        return float(-(labels.double() * log_p).sum(1).mean())
    return float(-log_p.gather(1, labels[:, None]).mean())


def kd64(s: torch.Tensor, t: torch.Tensor, tau: float = 4.0) -> float:
    """τ²·KL(σ_τ(t) ‖ σ_τ(s)), batch mean, float64."""
    p = F.softmax(t.double() / tau, 1)
    return float((p * (p.log() - F.log_softmax(s.double() / tau, 1))).sum(1).mean() * tau**2)


def first_step(trainer: Trainer, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Run the trainer's first step and capture its views, per-term losses and total (before the update)."""
    seen: dict[str, Any] = {}
    forward = trainer.augmenter.forward

    def recording_forward(batch, ctx):
        views = forward(batch, ctx)
        seen["batch"], seen["views"] = batch, views
        return views

    backward = trainer._backward

    def recording_backward(losses):
        with torch.no_grad():  # the same train-mode forward the step ran (BN uses batch statistics)
            seen["student"] = [trainer.student(v.images) for v in seen["views"]]
            seen["teacher"] = [trainer.teacher(v.images) for v in seen["views"]]
        seen["losses"] = {k: float(v.detach()) for k, v in losses.items()}
        total = backward(losses)
        seen["total"] = float(total.detach())
        return total

    monkeypatch.setattr(trainer.augmenter, "forward", recording_forward)
    monkeypatch.setattr(trainer, "_backward", recording_backward)
    trainer.student.train()
    trainer.teacher.eval()
    trainer.train_step(next(iter(trainer.loader.epoch(0))))
    return seen


@torch.no_grad()
def teacher_kl(trainer: Trainer, teacher: torch.nn.Module | None = None, tau: float = 4.0) -> float:
    """Mean τ²·KL(σ_τ(teacher) ‖ σ_τ(student)) over the trainer's evaluation images, both in eval mode."""
    teacher = teacher if teacher is not None else trainer.teacher
    student = trainer.student_module
    was_training = student.training
    student.eval()
    teacher.eval()
    total, n = 0.0, 0
    for batch in trainer.eval_loader:
        total += kd64(student(batch.images), teacher(batch.images), tau) * len(batch)
        n += len(batch)
    student.train(was_training)
    return total / n


def ce_twin(cfg: RunConfig, out: Path, **loss_options: Any) -> Trainer:
    """Train `cfg`'s student with cross-entropy only (same data, seed, optimizer, schedule, epochs, teacher
    loaded for measuring), no augmenter, events or target transform; returns the fitted trainer."""
    twin = dataclasses.replace(
        cfg,
        out=str(out),
        loss={"ce": {"weight": 1.0, **loss_options}},
        augmenter={"name": "none"},
        events=[],
        target_transform=None,
    )
    trainer = build_trainer(twin, "distill")
    trainer.fit()
    return trainer
