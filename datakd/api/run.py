"""What augmenters and stage events may ask of a run, as a typed protocol (the Trainer implements it).

Events and augmenters receive the run through their hooks (`StageEvent.on_epoch_start(trainer, epoch)`,
`Augmenter.on_epoch_start(epoch, trainer)`). Typing that argument as `RunControl` instead of the concrete
trainer keeps the methods below the engine in the import graph and lists, in one place, every attribute and
method a method may rely on: anything not here is private to the engine. Changes made through the methods
below (loss weights, teacher, optimizer) are recorded in every checkpoint, so a resumed run is in the same
stage without the event firing again.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from torch import nn

from datakd.api.context import Meters
from datakd.config import RunConfig
from datakd.data.loaders import TrainLoader


class RunControl(Protocol):
    """The part of a run that stage events and augmenters may read and change."""

    cfg: RunConfig
    run_dir: Path
    is_main: bool  # rank 0 (write files only there)
    total_epochs: int
    teacher: nn.Module | None
    student_module: nn.Module  # the unwrapped student (no DDP/compile wrapper)
    augmenter: nn.Module
    loader: TrainLoader
    meters: Meters

    def autocast(self) -> AbstractContextManager[Any]:
        """The run's mixed-precision context (a no-op on the CPU or without engine.amp)."""
        ...

    def scaled_epoch(self, epoch: float) -> int:
        """A recipe epoch number under the epoch-scaling rule (× schedule.scale)."""
        ...

    def loss_weight(self, name: str) -> float: ...

    def set_loss_weight(self, name: str, weight: float) -> None: ...

    def switch_teacher(self, checkpoint: str, name: str | None = None) -> None: ...

    def rebuild_optimizer(
        self, optim: dict[str, Any], schedule: dict[str, Any], start_epoch: int
    ) -> None: ...

    def save_checkpoint(self, best: bool = False) -> None:
        """Write last.pt now (an event or search loop checkpoints its own progress through `extra_state`)."""
        ...
