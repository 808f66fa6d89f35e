"""Pure loss functions (no modules, no state), each written once and reused by every method.

Conventions: logits are B×K; "batchmean" = sum over classes, mean over the batch; computations run in
float32 even under autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

REDUCTIONS = ("batchmean", "sum", "none")


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "batchmean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"unknown reduction {reduction!r}; valid choices: {', '.join(REDUCTIONS)}")


def kl_to_targets(
    student_logits: torch.Tensor,
    target_probs: torch.Tensor,
    temperature: float,
    reduction: str = "batchmean",
    scale_tau2: bool = True,
) -> torch.Tensor:
    """τ²·KL(q ‖ σ_τ(s)) for an arbitrary target distribution q (rows summing to 1).

    Zero-probability target entries contribute 0 (0·log 0 := 0), so one-hot or smoothed targets from a
    target transform are safe.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    log_p = F.log_softmax(student_logits.float() / temperature, dim=1)
    q = target_probs.float()
    per_sample = (torch.xlogy(q, q) - q * log_p).sum(dim=1)
    if scale_tau2:
        per_sample = per_sample * temperature**2
    return _reduce(per_sample, reduction)


def soft_cross_entropy(
    student_logits: torch.Tensor,
    target_probs: torch.Tensor,
    temperature: float = 1.0,
    reduction: str = "batchmean",
    scale_tau2: bool = False,
) -> torch.Tensor:
    """−Σ q log σ_τ(s): the KL above plus the (constant) target entropy; same gradient, different value.

    EffDstl and WSL report this form, so it is kept for faithful logging.
    """
    log_p = F.log_softmax(student_logits.float() / temperature, dim=1)
    per_sample = -(target_probs.float() * log_p).sum(dim=1)
    if scale_tau2:
        per_sample = per_sample * temperature**2
    return _reduce(per_sample, reduction)


def kd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 4.0,
    reduction: str = "batchmean",
) -> torch.Tensor:
    """Hinton KD: τ²·KL(σ_τ(t) ‖ σ_τ(s)), batch-mean by default (per-sample with reduction="none")."""
    q = F.softmax(teacher_logits.float() / temperature, dim=1)
    return kl_to_targets(student_logits, q, temperature, reduction)


def cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0, reduction: str = "batchmean"
) -> torch.Tensor:
    """CE with hard labels (B,) or label distributions (B×K); label smoothing spreads ε uniformly over K."""
    mode = "mean" if reduction == "batchmean" else reduction
    return F.cross_entropy(
        logits.float(),
        target if target.dtype == torch.long else target.float(),
        label_smoothing=label_smoothing,
        reduction=mode,
    )


def tst_search_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 1.0,
    beta: float = 1.0,
    eps: float = 1e-8,
    reduction: str = "batchmean",
) -> torch.Tensor:
    """TST Stage II objective (Eq. 2), minimised over the augmentation with both networks frozen:
    α·CE(teacher(x̂), y) + β·(−log(1 − p_S(y | x̂) + eps)), temperature 1.

    Low when the teacher still recognises x̂ and the student does not; the second term is bounded below by
    −log(1 + eps) ≈ 0 and stays finite when the student is certain (p_S = 1 gives −log(eps)).
    """
    wide = student_logits.dtype == torch.float64  # keep float64 (gradient checks); else compute in float32
    ce_teacher = F.cross_entropy(
        teacher_logits.double() if wide else teacher_logits.float(), labels, reduction="none"
    )
    p_student = F.softmax(student_logits if wide else student_logits.float(), dim=1)
    p_student = p_student.gather(1, labels.view(-1, 1)).squeeze(1)
    per_sample = alpha * ce_teacher - beta * torch.log(1.0 - p_student + eps)
    return _reduce(per_sample, reduction)
