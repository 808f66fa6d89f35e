"""DIST (Huang et al., NeurIPS 2022): distil relations between predictions instead of matching them exactly.

KL asks the student to reproduce the teacher's probabilities point-wise, which is hard when the teacher is
much stronger. DIST only asks that the predictions be linearly related: per sample, the student's class
distribution should correlate with the teacher's (inter-class relation), and per class, the student's
probabilities over the batch should correlate with the teacher's (intra-class relation). Pearson correlation
is invariant to shifts and scales, so the student is free in those directions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from datakd.api.context import TermInputs
from datakd.errors import DatakdError
from datakd.losses import functional as LF
from datakd.losses.base import LossTerm, register_loss


@register_loss("dist")
class DIST(LossTerm):
    """DIST (Huang et al. 2022): τ²·(β·inter + γ·intra), 1 − Pearson correlation of σ_τ predictions."""

    def __init__(
        self, beta: float = 1.0, gamma: float = 1.0, temperature: float = 1.0, eps: float = 1e-8
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise DatakdError(f"dist.temperature must be positive, got {temperature}")
        if beta < 0 or gamma < 0 or beta == gamma == 0:
            raise DatakdError(
                f"dist.beta and dist.gamma must be >= 0 and not both 0, got beta={beta}, gamma={gamma}"
            )
        if eps <= 0:
            raise DatakdError(f"dist.eps must be positive, got {eps}")
        self.beta = beta
        self.gamma = gamma
        self.temperature = temperature
        self.eps = eps

    def forward(self, inputs: TermInputs) -> torch.Tensor:
        tau = self.temperature
        p_s = F.softmax(inputs.student_logits.float() / tau, dim=1)
        p_t = inputs.soft_targets(tau).float()
        total = p_s.new_zeros(())
        if self.beta:
            inter = LF.inter_class_relation(p_s, p_t, self.eps)
            inputs.log(f"{self.term_name}_inter", inter.detach())
            total = total + self.beta * inter
        if self.gamma:
            intra = LF.intra_class_relation(p_s, p_t, self.eps)
            inputs.log(f"{self.term_name}_intra", intra.detach())
            total = total + self.gamma * intra
        return tau**2 * total
