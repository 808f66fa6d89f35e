"""Tap selection shared by the feature baselines: symbolic stage sets and student/teacher tap pairing.

Recipes may name taps directly (``stage2``, ``pre_logits``, ``layer3.4.act:input``) or use two symbols
that depend on the architecture and are resolved once the models exist (in ``setup``):

* ``all_stages``: every named ``stageK`` tap of the model, in order (RepDistiller's ``feat[1:-1]``);
* ``last_stage``: the deepest named stage (RepDistiller's ``feat[-2]``).

That is how AT/VID/SP keep one default for every zoo model although ResNets have three stages and
VGG/MobileNetV2/ResNet-50 four.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

from datakd.api.context import SetupContext, TermInputs
from datakd.errors import ConfigError, DatakdError
from datakd.losses.base import LossTerm, as_list
from datakd.models.registry import model_taps

ALL_STAGES = "all_stages"
LAST_STAGE = "last_stage"
SYMBOLS = (ALL_STAGES, LAST_STAGE)
_STAGE = re.compile(r"^stage(\d+)$")


def stage_taps(model: nn.Module) -> list[str]:
    """The model's named stage taps ``stage1..N`` in order (empty for models without a tap table)."""
    found = [(int(m.group(1)), name) for name in model_taps(model) if (m := _STAGE.match(name))]
    return [name for _, name in sorted(found)]


def resolve_taps(model: nn.Module, spec: Sequence[str], where: str) -> list[str]:
    """Expand ``all_stages`` / ``last_stage`` in `spec` for `model`; other taps pass through."""
    taps: list[str] = []
    for tap in spec:
        if tap not in SYMBOLS:
            taps.append(tap)
            continue
        stages = stage_taps(model)
        if not stages:
            name = getattr(getattr(model, "module", model), "datakd_name", type(model).__name__)
            raise DatakdError(
                f"{where}: {tap!r} needs named stage taps, but model {name!r} has none; list its taps "
                "explicitly (module paths, see `datakd info --model NAME`)"
            )
        taps.extend(stages if tap == ALL_STAGES else stages[-1:])
    return taps


class PairedFeatureTerm(LossTerm):
    """Base of terms comparing student taps with teacher taps one to one (stage i ↔ stage i).

    Subclasses pass the tap specs to ``__init__``; ``setup`` resolves symbols, checks that both sides
    name the same number of taps and records their shapes in ``student_shapes``/``teacher_shapes``, then
    calls ``build(ctx)`` for connectors. ``pairs(inputs)`` returns the float32 feature pairs.
    """

    def __init__(self, student: str | Sequence[str], teacher: str | Sequence[str]) -> None:
        super().__init__()
        self._student_spec = as_list(student)
        self._teacher_spec = as_list(teacher)
        if not self._student_spec or not self._teacher_spec:
            raise ConfigError(f"{type(self).__name__}: student and teacher taps must not be empty")
        self.student_taps = list(self._student_spec)
        self.teacher_taps = list(self._teacher_spec)
        self.student_shapes: list[tuple[int, ...]] = []
        self.teacher_shapes: list[tuple[int, ...]] = []

    @property
    def label(self) -> str:
        return f"loss.{self.term_name or type(self).__name__}"

    def setup(self, ctx: SetupContext) -> None:
        if ctx.teacher is None:
            raise DatakdError(f"{self.label} compares with a teacher; run it with `datakd distill`")
        self.student_taps = resolve_taps(ctx.student, self._student_spec, f"{self.label}.student")
        self.teacher_taps = resolve_taps(ctx.teacher, self._teacher_spec, f"{self.label}.teacher")
        if len(self.student_taps) != len(self.teacher_taps):
            raise ConfigError(
                f"{self.label}: the student taps {self.student_taps} and the teacher taps "
                f"{self.teacher_taps} must pair one to one; set `student:` and `teacher:` to lists of "
                "equal length"
            )
        s_shapes = ctx.student_shapes(self.student_taps)
        t_shapes = ctx.teacher_shapes(self.teacher_taps)
        self.student_shapes = [s_shapes[t] for t in self.student_taps]
        self.teacher_shapes = [t_shapes[t] for t in self.teacher_taps]
        self.build(ctx)

    def build(self, ctx: SetupContext) -> None:
        """Create connectors from ``student_shapes``/``teacher_shapes`` (none by default)."""

    def pairs(self, inputs: TermInputs) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if any(t in SYMBOLS for t in self.student_taps + self.teacher_taps):
            raise DatakdError(f"{self.label}: call setup(ctx) before the first step (taps are unresolved)")
        return [
            (inputs.student_features[s].float(), inputs.teacher_features[t].float())
            for s, t in zip(self.student_taps, self.teacher_taps)
        ]
