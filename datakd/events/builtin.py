"""General-purpose stage events: change loss weights, decay them, switch teacher, reset the optimizer."""

from __future__ import annotations

from typing import Any

from datakd.api.run import RunControl
from datakd.errors import ConfigError
from datakd.events.base import StageEvent, epoch_list, register_event


@register_event("set_loss_weights")
class SetLossWeights(StageEvent):
    """At epoch `at`, set the weights of named loss terms (0 switches a term off)."""

    def __init__(self, at: int, weights: dict[str, float]) -> None:
        self.at = at
        self.weights = dict(weights)

    def loss_weight_targets(self) -> list[str]:
        return [name for name, weight in self.weights.items() if float(weight) not in (0.0, 1.0)]

    def on_epoch_start(self, trainer: RunControl, epoch: int) -> None:
        if epoch == trainer.scaled_epoch(self.at):
            for name, weight in self.weights.items():
                trainer.set_loss_weight(name, weight)


@register_event("scale_loss_weights")
class ScaleLossWeights(StageEvent):
    """Multiply named loss weights by `factor` at the given epochs, or every `every` epochs.

    Role-wise KD decays its distillation weight this way (×0.5 every 60 epochs in the paper).
    """

    def __init__(
        self, terms: list[str], factor: float, at: int | list[int] | None = None, every: int | None = None
    ) -> None:
        if (at is None) == (every is None):
            raise ConfigError("scale_loss_weights needs exactly one of 'at' (epochs) or 'every' (period)")
        self.terms = list(terms)
        self.factor = factor
        self.at = epoch_list(at) if at is not None else []
        self.every = every

    def loss_weight_targets(self) -> list[str]:
        return list(self.terms) if self.factor != 0 else []

    def on_epoch_start(self, trainer: RunControl, epoch: int) -> None:
        fire = (
            (epoch in [trainer.scaled_epoch(a) for a in self.at])
            if self.at
            else (epoch > 0 and epoch % trainer.scaled_epoch(self.every) == 0)
        )  # type: ignore[arg-type]
        if fire:
            for name in self.terms:
                trainer.set_loss_weight(name, trainer.loss_weight(name) * self.factor)


@register_event("switch_teacher")
class SwitchTeacher(StageEvent):
    """At epoch `at`, replace the teacher by the model in `checkpoint` (any architecture).

    `model` names the architecture when the checkpoint does not record it (a raw torchvision/timm state
    dict, e.g. ``model: timm:resnet34d``); in a recipe the key ``name`` is the event's own name, so the
    model name can only be given as `model`. With `optim`/`schedule` given, the optimizer and LR schedule
    are rebuilt from that epoch (EffDstl's stage 2: lr 0.05, wd 0, a fresh cosine over the remaining
    epochs).
    """

    def __init__(
        self,
        at: int,
        checkpoint: str,
        name: str | None = None,
        optim: dict[str, Any] | None = None,
        schedule: dict[str, Any] | None = None,
        model: str | None = None,
    ) -> None:
        self.at = at
        self.checkpoint = checkpoint
        self.name = model or name
        self.optim = optim
        self.schedule = schedule

    def on_epoch_start(self, trainer: RunControl, epoch: int) -> None:
        if epoch == trainer.scaled_epoch(self.at):
            trainer.switch_teacher(self.checkpoint, self.name)
            if self.optim is not None or self.schedule is not None:
                trainer.rebuild_optimizer(self.optim or {}, self.schedule or {}, start_epoch=epoch)


@register_event("reset_optimizer")
class ResetOptimizer(StageEvent):
    """At epoch `at`, rebuild the optimizer (fresh momentum) and restart the LR schedule from there."""

    def __init__(
        self, at: int, optim: dict[str, Any] | None = None, schedule: dict[str, Any] | None = None
    ) -> None:
        self.at = at
        self.optim = optim or {}
        self.schedule = schedule or {}

    def on_epoch_start(self, trainer: RunControl, epoch: int) -> None:
        if epoch == trainer.scaled_epoch(self.at):
            trainer.rebuild_optimizer(self.optim, self.schedule, start_epoch=epoch)
