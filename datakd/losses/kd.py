"""Hinton knowledge distillation: τ²·KL between teacher and student distributions softened at τ."""

from __future__ import annotations

import torch

from datakd.api.context import TermInputs
from datakd.errors import DatakdError
from datakd.losses import functional as LF
from datakd.losses.base import LossTerm, register_loss

FORMS = ("kl", "soft_ce")


@register_loss("kd")
class KnowledgeDistillation(LossTerm):
    """Hinton KD, τ²·KL(σ_τ(t) ‖ σ_τ(s)); reads the run's target transform when one is configured."""

    def __init__(self, temperature: float = 4.0, scale_tau2: bool = True, form: str = "kl") -> None:
        super().__init__()
        if temperature <= 0:
            raise DatakdError(f"kd.temperature must be positive, got {temperature}")
        if form not in FORMS:
            raise DatakdError(f"kd.form {form!r} is not one of {', '.join(FORMS)}")
        self.temperature = temperature
        self.scale_tau2 = scale_tau2
        self.form = form

    def forward(self, inputs: TermInputs) -> torch.Tensor:
        targets = inputs.soft_targets(self.temperature)
        loss_fn = LF.kl_to_targets if self.form == "kl" else LF.soft_cross_entropy
        return loss_fn(inputs.student_logits, targets, self.temperature, scale_tau2=self.scale_tau2)
