"""Similarity preserving distillation (Tung & Mori 2019) on the last stage."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from datakd.api.context import TermInputs
from datakd.api.features import LAST_STAGE
from datakd.losses import relations as R
from datakd.losses.base import register_loss
from datakd.losses.feature_taps import PairedFeatureTerm


@register_loss("sp")
class SimilarityPreserving(PairedFeatureTerm):
    """Similarity preserving: Frobenius distance of row-normalised batch Gram matrices, divided by b²."""

    def __init__(
        self, student: str | Sequence[str] = LAST_STAGE, teacher: str | Sequence[str] = LAST_STAGE
    ) -> None:
        super().__init__(student, teacher)

    def forward(self, inputs: TermInputs) -> torch.Tensor:
        total = inputs.student_logits.new_zeros(())
        for fs, ft in self.pairs(inputs):
            total = total + R.similarity_preserving_loss(fs, ft)
        return total
