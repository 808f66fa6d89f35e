"""Weighted soft labels (Zhou et al., ICLR 2021): per-sample-weighted soft cross-entropy to the teacher.

The weight 1 − exp(−L_s/L_t) compares how well student and teacher fit the label, so samples where the
teacher is worse than the student are distilled less. The formula lives in
`datakd.losses.functional.wsl`; official WSL is ``ce + 2.5·wsl`` at τ = 2, EffDstl's stage 1 is
``ce(label_smoothing 0.1) + 0.5·wsl(variant effdstl)``.
"""

from __future__ import annotations

import torch

from datakd.api.context import TermInputs
from datakd.errors import ConfigError, DatakdError
from datakd.losses import functional as LF
from datakd.losses.base import LossTerm, register_loss

VARIANTS = ("official", "effdstl")


@register_loss("wsl")
class WeightedSoftLabels(LossTerm):
    """WSL (Zhou et al. 2021): soft CE to the teacher at τ, weighted per sample by 1−exp(−CE_s/CE_t)."""

    needs_labels = True

    def __init__(self, temperature: float = 2.0, variant: str = "official") -> None:
        super().__init__()
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
            raise ConfigError(f"wsl.temperature must be a positive number, got {temperature!r}")
        if variant not in VARIANTS:
            raise ConfigError(f"unknown wsl.variant {variant!r}; valid choices: {', '.join(VARIANTS)}")
        self.temperature = float(temperature)
        self.variant = variant

    def forward(self, inputs: TermInputs) -> torch.Tensor:
        # The raw teacher, never the run's target transform: WSL's weight is defined against the teacher's
        # own fit of the label, and EffDstl configures its stage-2 CKM transform for the whole run.
        labels = inputs.labels
        if labels is None:
            raise DatakdError(
                f"loss term {self.term_name!r} (wsl) needs hard labels, but view {inputs.view.name!r} has "
                "none; remove it from that view"
            )
        if inputs.teacher_logits is None:
            raise DatakdError(f"loss term {self.term_name!r} (wsl) needs a teacher")
        return LF.wsl(inputs.student_logits, inputs.teacher_logits, labels, self.temperature, self.variant)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, temperature={self.temperature}, variant={self.variant!r}"
