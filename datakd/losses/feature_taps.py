"""Student/teacher tap pairing shared by the feature baselines (AT, FitNet, VID, SP, CC, RKD, PKT, CRD, ...).

Recipes may name taps directly (``stage2``, ``pre_logits``, ``layer3.4.act:input``) or use the symbols
``all_stages`` / ``last_stage`` (`datakd.api.features.resolve_taps`), resolved once the models exist (in
``setup``). That is how AT/VID/SP keep one default for every zoo model although ResNets have three stages
and VGG/MobileNetV2/ResNet-50 four.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from datakd.api.context import SetupContext, TermInputs
from datakd.api.features import SYMBOLS, resolve_taps
from datakd.errors import ConfigError, DatakdError
from datakd.losses.base import LossTerm, as_list


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
