"""Pure loss functions (no modules, no state), each written once and reused by every method.

Conventions: logits are B×K; "batchmean" = sum over classes, mean over the batch; computations run in
float32 even under autocast (float64 inputs stay float64, so tests can gradcheck the library functions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

REDUCTIONS = ("batchmean", "sum", "none")


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """float32 for half/bfloat16/float32 inputs (autocast-safe), float64 kept as it is."""
    return x if x.dtype == torch.float64 else x.float()


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
    log_p = F.log_softmax(_upcast(student_logits) / temperature, dim=1)
    q = _upcast(target_probs)
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
    q = F.softmax(_upcast(teacher_logits) / temperature, dim=1)
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
