"""Logit KD for detectors (TST's L_KL, τ = 1 by default): student class predictions follow the teacher's.

* Two-stage (Faster/Mask R-CNN): softmax over K + 1 classes (background included) of the box head's
  `roi_class_logits`, on the student's sampled proposals; the teacher's box head is run on the same
  proposals, so the rows pair up. Hinton KD, τ²·KL(σ_τ(t) ‖ σ_τ(s)), mean over proposals: the library's
  one KD function (`datakd.losses.functional.kd`).
* One-stage (RetinaNet, FCOS): these heads classify with independent sigmoids (trained by focal loss), so
  the teacher's knowledge about an anchor is one Bernoulli distribution per class, not a distribution over
  classes; a softmax over K + 1 would invent a competition between classes the teacher never learned (its
  sigmoid probabilities do not sum to 1) and a background column it never predicted. The term is the
  per-class Bernoulli KL at τ, τ²·Σ_k KL(Bern(σ(t_k/τ)) ‖ Bern(σ(s_k/τ))), i.e. the binary cross-entropy
  against the teacher's σ(t/τ) minus the teacher's own binary entropy (so it is 0 when the logits agree),
  summed over classes and averaged over all anchors of all levels [our choice: the contract does not
  carry the matcher's ignore band, and those ambiguous anchors are where the teacher's soft scores say
  most; as for the sum-vs-mean, the term's weight absorbs the scale].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from datakd.api.context import TermInputs
from datakd.errors import ConfigError, choice_error
from datakd.losses import functional as LF
from datakd.losses.base import LossTerm, register_loss

TWO_STAGE = ("rcnn", "maskrcnn")
ONE_STAGE = ("retinanet", "fcos")


def bernoulli_kd(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """τ²·Σ_k KL(Bern(σ(t_k/τ)) ‖ Bern(σ(s_k/τ))) per row (summed over the last dimension), averaged over
    rows: ...×K sigmoid logits of one shape. float64 inputs stay float64 (gradient checks)."""
    if temperature <= 0:
        raise ConfigError(f"det_kd.temperature must be positive, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ConfigError(
            f"det_kd: student and teacher class logits differ in shape: {tuple(student_logits.shape)} vs "
            f"{tuple(teacher_logits.shape)} (the two detectors need the same anchors and classes)"
        )
    wide = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
    s = student_logits.to(wide) / temperature
    t = teacher_logits.to(wide) / temperature
    p = torch.sigmoid(t)
    # KL(Bern(p) ‖ Bern(σ(s))) = BCE(s; p) − BCE(t; p) = softplus(s) − softplus(t) − p·(s − t): the Bregman
    # divergence of softplus, exactly 0 at s = t, gradient σ(s) − p. Rounding can leave −1e-9 where s ≈ t
    # (KL is ≥ 0 element-wise), hence the clamp; the true gradient there is ≈ 0 anyway.
    kl = (F.softplus(s) - F.softplus(t) - p * (s - t)).clamp_min(0.0)
    per_row = kl.sum(dim=-1).reshape(-1)
    return temperature**2 * per_row.mean()


@register_loss("det_kd")
class DetectionKD(LossTerm):
    """Detector logit KD: softmax KL on R-CNN box-head logits, per-class Bernoulli KL on one-stage anchors."""

    tasks = ("detection",)

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        if isinstance(temperature, bool) or not temperature > 0:
            raise ConfigError(f"det_kd.temperature must be positive, got {temperature!r}")
        self.temperature = float(temperature)

    def forward(self, inputs: TermInputs) -> torch.Tensor:
        s_out, t_out = inputs.student_outputs, inputs.teacher_outputs
        family, t_family = s_out.get("family"), t_out.get("family")
        if family in TWO_STAGE and t_family in TWO_STAGE:
            s, t = s_out["roi_class_logits"], t_out["roi_class_logits"]
            if s.shape != t.shape:
                raise ConfigError(
                    f"det_kd: R-CNN box-head logits differ in shape: student {tuple(s.shape)}, teacher "
                    f"{tuple(t.shape)} (same classes and the student's proposals are needed)"
                )
            if s.shape[0] == 0:
                return s.sum() * 0.0
            return LF.kd(s, t.detach(), self.temperature)
        if family in ONE_STAGE and t_family in ONE_STAGE:
            return bernoulli_kd(s_out["cls_logits"], t_out["cls_logits"].detach(), self.temperature)
        if family not in (*TWO_STAGE, *ONE_STAGE):
            raise choice_error("detector family for det_kd", family, (*TWO_STAGE, *ONE_STAGE), ConfigError)
        raise ConfigError(
            f"det_kd pairs a {family} student with a {t_family} teacher; it needs both two-stage "
            f"({', '.join(TWO_STAGE)}) or both one-stage ({', '.join(ONE_STAGE)})"
        )
