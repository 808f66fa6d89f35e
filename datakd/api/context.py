"""The objects the trainer hands to extension points: what a method may see and do at setup and per step.

Keeping these small and explicit is what lets a method be one file: a loss term reads `TermInputs`, an
augmenter turns a `Batch` into `View`s using `StepContext`, and everything that needs shapes or dataset
facts at build time gets a `SetupContext`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from datakd.api.features import FeatureRecorder, feature_shapes

if TYPE_CHECKING:
    from datakd.data.loaders import Normalizer


class Meters(Protocol):
    """Per-epoch running means (the engine's `EpochMeters`): each name becomes a metrics.csv column."""

    def add(self, name: str, value: float | torch.Tensor, count: float = 1) -> None: ...


@dataclass
class View:
    """One forward pass of a training step: the images and how they are supervised.

    `labels` are hard labels (None when the view is supervised by the teacher alone, e.g. a TLCutMix
    view); `targets` optionally replaces them with a per-sample label distribution (CutMix/mixup labels).
    `teacher_logits` may carry logits the augmenter already computed with the (deterministic, eval-mode)
    teacher on exactly these images, so the trainer does not run the teacher twice.
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor | None
    targets: torch.Tensor | None = None
    indices: torch.Tensor | None = None
    teacher_logits: torch.Tensor | None = None
    weight: float = 1.0
    # Detection: one target dict per image (boxes, labels, masks), as the loader yields them.
    annotations: list[dict[str, torch.Tensor]] | None = None


@dataclass
class SetupContext:
    """What a method may use when it is built: models, dataset facts, a sample batch for shapes."""

    student: nn.Module
    teacher: nn.Module | None
    num_classes: int
    num_train: int
    train_labels: torch.Tensor
    sample_images: torch.Tensor
    device: torch.device
    batch_size: int
    steps_per_epoch: int
    total_epochs: int
    normalizer: Normalizer
    mean: tuple[float, ...]
    std: tuple[float, ...]
    seed: int = 0
    run_dir: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def student_shapes(self, taps: Iterable[str]) -> dict[str, tuple[int, ...]]:
        return feature_shapes(self.student, taps, self.sample_images)

    def teacher_shapes(self, taps: Iterable[str]) -> dict[str, tuple[int, ...]]:
        if self.teacher is None:
            raise ValueError("this method needs a teacher")
        return feature_shapes(self.teacher, taps, self.sample_images)


@dataclass
class StepContext:
    """Per-step facts and services for augmenters: the epoch/step, and forward passes of both models."""

    epoch: int
    step: int
    global_step: int
    steps_per_epoch: int
    total_epochs: int
    student: nn.Module
    teacher: nn.Module | None
    meters: Meters
    autocast: Callable[[], Any]

    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Teacher logits in eval mode without gradient (the teacher is pinned to eval by the trainer)."""
        if self.teacher is None:
            raise ValueError("this augmenter needs a teacher")
        with torch.no_grad(), self.autocast():
            return self.teacher(images).float()

    def student_logits(self, images: torch.Tensor, train_mode: bool = True) -> torch.Tensor:
        """Student logits without gradient; `train_mode` decides BN behaviour (train mode updates stats)."""
        was_training = self.student.training
        self.student.train(train_mode)
        try:
            with torch.no_grad(), self.autocast():
                return self.student(images).float()
        finally:
            self.student.train(was_training)

    def log(self, name: str, value: float | torch.Tensor, count: int = 1) -> None:
        """Add a value to this epoch's mean of `name` (a column of metrics.csv)."""
        self.meters.add(name, value, count)


@dataclass
class TermInputs:
    """Everything a loss term may read for one view."""

    view: View
    student_logits: torch.Tensor
    teacher_logits: torch.Tensor | None
    student_features: dict[str, torch.Tensor]
    teacher_features: dict[str, torch.Tensor]
    epoch: int
    step: int
    global_step: int
    steps_per_epoch: int
    total_epochs: int
    _soft_targets: Callable[[float], torch.Tensor] | None = None
    _log: Callable[[str, float | torch.Tensor, float], None] | None = None
    # Dense tasks: what the task's forward returned besides logits and taps (see datakd/engine/tasks.py):
    # detection "losses" (student), "features" (FPN levels), head outputs, resized "targets", ...;
    # segmentation "out" and "aux". Empty for classification.
    student_outputs: dict[str, Any] = field(default_factory=dict)
    teacher_outputs: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> torch.Tensor | None:
        return self.view.labels

    @property
    def progress(self) -> float:
        """Training progress in epochs, fractional within the epoch (for warm-ups and schedules)."""
        return self.epoch + self.step / max(self.steps_per_epoch, 1)

    def soft_targets(self, temperature: float) -> torch.Tensor:
        """The teacher's distribution at `temperature`, after the run's target transform (if any)."""
        if self._soft_targets is not None:
            return self._soft_targets(temperature)
        if self.teacher_logits is None:
            raise ValueError("soft targets need a teacher")
        return torch.softmax(self.teacher_logits.float() / temperature, dim=1)

    def log(self, name: str, value: float | torch.Tensor, count: float = 1) -> None:
        """Add a value to this epoch's mean of `name` (a column of metrics.csv), e.g. DPK's CKA."""
        if self._log is not None:
            self._log(name, value, count)


def record(
    model: nn.Module, images: torch.Tensor, taps: Iterable[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward pass of `model` recording `taps` (hooks live only for this call)."""
    taps = list(taps)
    if not taps:
        logits = model(images)
        return logits, {"logits": logits}
    with FeatureRecorder(model, taps) as recorder:
        return recorder.forward(images)
