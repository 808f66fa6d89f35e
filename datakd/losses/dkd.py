"""Decoupled KD (Zhao et al., CVPR 2022): Hinton KD split into a target-class and a non-target-class term.

KD's KL decomposes into TCKD (binary: target vs. the rest) and NCKD (the distribution over the non-target
classes), the latter multiplied by the teacher's non-target mass (1 − p_t). DKD drops that coupling and
weights the two freely: α·TCKD + β·NCKD, both τ²·KL. The loss is warmed up linearly over the first epochs,
as in the authors' code (mdistiller), because β·NCKD with β = 8 is large for a randomly initialised student.
"""

from __future__ import annotations

import torch

from datakd.api.context import SetupContext, TermInputs
from datakd.errors import ConfigError, DatakdError
from datakd.losses import functional as LF
from datakd.losses.base import LossTerm, register_loss

WARMUP_MODES = ("epoch", "step")


@register_loss("dkd")
class DecoupledKD(LossTerm):
    """Decoupled KD (Zhao et al. 2022): α·TCKD + β·NCKD at temperature τ, loss warmed up over 20 epochs."""

    needs_labels = True

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        warmup_epochs: float = 20.0,
        warmup_mode: str = "epoch",
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise DatakdError(f"dkd.temperature must be positive, got {temperature}")
        if alpha < 0 or beta < 0:
            raise DatakdError(f"dkd.alpha and dkd.beta must be non-negative, got alpha={alpha}, beta={beta}")
        if warmup_epochs < 0:
            raise DatakdError(f"dkd.warmup_epochs must be >= 0, got {warmup_epochs}")
        if warmup_mode not in WARMUP_MODES:
            raise DatakdError(f"dkd.warmup_mode {warmup_mode!r} is not one of {', '.join(WARMUP_MODES)}")
        self.alpha = alpha
        self.beta = beta
        self.temperature = temperature
        self.warmup_epochs = warmup_epochs
        self.warmup_mode = warmup_mode
        self.epoch_scale = 1.0

    def setup(self, ctx: SetupContext) -> None:
        cfg = ctx.extra.get("config")
        if cfg is None:
            return
        # The warm-up is given in recipe epochs and follows the epoch-scaling rule like every other epoch.
        self.epoch_scale = cfg.schedule.scale
        transform = cfg.target_transform
        if transform:
            shared = sorted(set(transform.get("views") or ["main"]) & set(self.views))
            if shared:
                raise ConfigError(
                    f"loss term {self.term_name!r} (dkd) decouples the teacher's logits exactly and cannot "
                    f"use target transform {transform['name']!r} on views {shared}; use kd with the "
                    "transform, or restrict the transform's views"
                )

    def warmup_factor(self, epoch: int, progress: float) -> float:
        """min(e / W, 1): e = epoch + 1 ("epoch", mdistiller's per-epoch constant with 1-based epochs) or the
        fractional epoch ("step", a per-iteration ramp from 0); W = warmup_epochs × schedule.scale."""
        span = self.warmup_epochs * self.epoch_scale
        if span <= 0:
            return 1.0
        elapsed = epoch + 1 if self.warmup_mode == "epoch" else progress
        return min(elapsed / span, 1.0)

    def forward(self, inputs: TermInputs) -> torch.Tensor:
        view = inputs.view
        if view.labels is None or view.targets is not None:
            what = "no labels" if view.labels is None else "label distributions (mixed images)"
            raise DatakdError(
                f"loss term {self.term_name!r} (dkd) needs one hard label per image, but view "
                f"{view.name!r} has {what}; remove it from that view"
            )
        tckd, nckd = LF.dkd_parts(inputs.student_logits, inputs.teacher_logits, view.labels, self.temperature)
        factor = self.warmup_factor(inputs.epoch, inputs.progress)
        inputs.log(f"{self.term_name}_tckd", tckd.detach())
        inputs.log(f"{self.term_name}_nckd", nckd.detach())
        inputs.log(f"{self.term_name}_warmup", factor)
        return factor * (self.alpha * tckd + self.beta * nckd)
