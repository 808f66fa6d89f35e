"""Attention transfer (Zagoruyko & Komodakis 2017) over every stage pair."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from datakd.api.context import SetupContext, TermInputs
from datakd.api.features import ALL_STAGES
from datakd.errors import DatakdError
from datakd.losses import relations as R
from datakd.losses.base import register_loss
from datakd.losses.feature_taps import PairedFeatureTerm


@register_loss("at")
class AttentionTransfer(PairedFeatureTerm):
    """Attention transfer: match L2-normalised spatial attention maps (|f|^p over channels) of all stages."""

    def __init__(
        self,
        p: float = 2.0,
        student: str | Sequence[str] = ALL_STAGES,
        teacher: str | Sequence[str] = ALL_STAGES,
    ) -> None:
        super().__init__(student, teacher)
        if p <= 0:
            raise DatakdError(f"at.p must be positive, got {p}")
        self.p = float(p)

    def build(self, ctx: SetupContext) -> None:
        for tap, shape in zip(
            self.student_taps + self.teacher_taps, self.student_shapes + self.teacher_shapes
        ):
            if len(shape) != 3:
                raise DatakdError(f"{self.label}: tap {tap!r} gives shape {list(shape)}; AT needs C×H×W maps")

    def forward(self, inputs: TermInputs) -> torch.Tensor:
        # Stage pairs of different resolutions are average-pooled to the smaller one (match_spatial).
        total = inputs.student_logits.new_zeros(())
        for fs, ft in self.pairs(inputs):
            total = total + R.attention_loss(fs, ft, self.p)
        return total
