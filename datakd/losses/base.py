"""The loss-term extension point: a named, weighted nn.Module that reads logits and tapped features.

A term declares the taps it reads (`student_taps`, `teacher_taps`), may own trainable connector modules
(they join the student's optimizer automatically, being parameters of the term), may say which views it
applies to, and may customise how its gradient is combined with the rest (`combine_gradient`).
Register with ``@register_loss("name")``; the trainer never needs to change for a new term.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from datakd.api.context import SetupContext, TermInputs
from datakd.errors import ConfigError
from datakd.registry import Registry

# Options every term accepts, handled by the builder rather than the term's constructor.
COMMON_OPTIONS = ("type", "weight", "views")


class LossTerm(nn.Module):
    """Base class of loss terms. Subclasses implement `forward(inputs) -> scalar tensor`."""

    #: True when the term reads teacher outputs (the trainer then runs the teacher on the view).
    needs_teacher: ClassVar[bool] = True
    #: True when the term needs hard labels (fails clearly on teacher-only views).
    needs_labels: ClassVar[bool] = False
    #: True when `combine_gradient` should be used instead of summing gradients.
    custom_gradient: ClassVar[bool] = False
    #: The tasks (RunConfig.task) whose outputs this term reads; checked when the run is built.
    tasks: ClassVar[tuple[str, ...]] = ("classification",)

    def __init__(self) -> None:
        super().__init__()
        self.term_name: str = ""
        self.weight: float = 1.0
        self.views: tuple[str, ...] = ("main",)
        self.student_taps: list[str] = []
        self.teacher_taps: list[str] = []

    def setup(self, ctx: SetupContext) -> None:
        """Build connectors that depend on feature shapes (called once, before the optimizer is made)."""

    def on_epoch_start(self, epoch: int) -> None:
        """Per-epoch hook (e.g. schedules internal to a term)."""

    def forward(self, inputs: TermInputs) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def combine_gradient(
        self, param: nn.Parameter, own: torch.Tensor | None, rest: torch.Tensor | None, epoch: int
    ) -> torch.Tensor | None:
        """Combine this term's (weighted) gradient `own` with the sum `rest` of the other terms' gradients
        for one parameter. Only called when `custom_gradient` is True; the default sums."""
        if own is None:
            return rest
        return own if rest is None else own + rest

    def inert_weight_reason(self) -> str | None:
        """Why this term's weight does not change training (only 0 = off vs non-zero matters), or None.

        The builder warns when a recipe sets such a weight or an event changes it."""
        return None

    def extra_repr(self) -> str:
        return f"name={self.term_name!r}, weight={self.weight}, views={list(self.views)}"


LOSSES: Registry[type[LossTerm]] = Registry("loss term", packages=("datakd.losses",))


def register_loss(name: str):
    return LOSSES.register(name)


def build_terms(spec: dict[str, dict[str, Any]]) -> list[LossTerm]:
    """Build the run's terms from ``{name: {type, weight, views, ...options}}``."""
    terms = []
    for name, options in spec.items():
        options = dict(options)
        kind = options.pop("type", name)
        weight = options.pop("weight", 1.0)
        views = options.pop("views", ["main"])
        if isinstance(views, str):
            views = [views]
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ConfigError(f"loss.{name}.weight must be a number, got {weight!r}")
        term = LOSSES.build(kind, **options)
        term.term_name = name
        term.weight = float(weight)
        term.views = tuple(views)
        terms.append(term)
    return terms


def inert_weight_warnings(
    spec: dict[str, dict[str, Any]], terms: Sequence[LossTerm], events: Sequence[Any]
) -> list[str]:
    """One line per term whose weight the recipe sets (to a value other than 0 or 1) or an event changes
    (an event's ``loss_weight_targets()``) although the term ignores its weight."""
    messages = []
    for term in terms:
        reason = term.inert_weight_reason()
        if reason is None:
            continue
        setters = []
        weight = spec.get(term.term_name, {}).get("weight")
        if weight is not None and float(weight) not in (0.0, 1.0):
            setters.append(f"loss.{term.term_name}.weight={weight}")
        for event in events:
            targets = getattr(event, "loss_weight_targets", lambda: [])()
            if term.term_name in targets:
                setters.append(f"event {type(event).__name__}")
        if setters:
            messages.append(f"{' and '.join(setters)} will not change training: {reason}")
    return messages


def as_list(taps: str | Sequence[str] | None) -> list[str]:
    if taps is None:
        return []
    return [taps] if isinstance(taps, str) else list(taps)
