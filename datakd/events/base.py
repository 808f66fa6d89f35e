"""The stage-event extension point: callbacks at epoch/step boundaries that change the run.

An event may switch the teacher, rebuild the optimizer and schedule, change loss weights or run a search
phase (TST Stage II), always through the trainer's methods (`switch_teacher`, `rebuild_optimizer`,
`set_loss_weight`), whose effects the trainer records in every checkpoint, so a resumed run is in the same
stage without the event having to re-fire. Epoch numbers are 0-indexed and refer to the start of that
epoch; like LR milestones they are multiplied by ``schedule.scale``.
"""

from __future__ import annotations

from typing import Any

from datakd.api.run import RunControl
from datakd.registry import Registry


class StageEvent:
    """Base class; override the hooks you need."""

    def on_train_start(self, trainer: RunControl) -> None:
        """Once, after setup (also on resume)."""

    def on_epoch_start(self, trainer: RunControl, epoch: int) -> None:
        """Before the first step of `epoch` (not called again when resuming inside that epoch)."""

    def on_step_start(self, trainer: RunControl, epoch: int, step: int) -> None:
        """Before every step (keep it cheap)."""

    def on_epoch_end(self, trainer: RunControl, epoch: int) -> None:
        """After `epoch`'s evaluation, before its checkpoint."""

    def loss_weight_targets(self) -> list[str]:
        """Names of the loss terms whose weight this event sets (to a value other than 0 or 1) or rescales."""
        return []

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""


EVENTS: Registry[type[StageEvent]] = Registry("stage event", packages=("datakd.events",))


def register_event(name: str):
    return EVENTS.register(name)


def build_events(specs: list[dict[str, Any]]) -> list[StageEvent]:
    events = []
    for spec in specs:
        options = dict(spec)
        name = options.pop("name")
        events.append(EVENTS.build(name, **options))
    return events


def epoch_list(at: int | list[int]) -> list[int]:
    return [at] if isinstance(at, int) else [int(a) for a in at]
