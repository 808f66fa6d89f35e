"""Probabilistic knowledge transfer (Passalis & Tefas 2018) on penultimate features."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from datakd.api.context import TermInputs
from datakd.errors import DatakdError
from datakd.losses import relations as R
from datakd.losses.base import register_loss
from datakd.losses.feature_taps import PairedFeatureTerm


@register_loss("pkt")
class ProbabilisticKT(PairedFeatureTerm):
    """PKT: KL between teacher and student conditional probabilities from cosine-similarity kernels."""

    def __init__(
        self,
        eps: float = 1e-7,
        student: str | Sequence[str] = "pre_logits",
        teacher: str | Sequence[str] = "pre_logits",
    ) -> None:
        super().__init__(student, teacher)
        if eps <= 0:
            raise DatakdError(f"pkt.eps must be positive, got {eps}")
        self.eps = float(eps)

    def forward(self, inputs: TermInputs) -> torch.Tensor:
        total = inputs.student_logits.new_zeros(())
        for fs, ft in self.pairs(inputs):
            total = total + R.pkt_loss(fs, ft, self.eps)
        return total
