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


# ------------------------------------------------------------------------------------------------------
# WSL — weighted soft labels (Zhou et al., ICLR 2021); EffDstl's stage-1 loss uses its `effdstl` variant.
# ------------------------------------------------------------------------------------------------------


def wsl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    temperature: float = 2.0,
    variant: str = "official",
) -> torch.Tensor:
    """Weighted soft labels: τ²·mean_b[w_b · (−Σ_c σ_τ(t)_c log σ_τ(s)_c)], batch mean, a scalar.

    The per-sample weight w = 1 − exp(−max(L_s / L_t, 0)) (detached) shrinks distillation where the
    student already fits the label better than the teacher (L = the label's cross-entropy):
    * ``official`` (the WSL code): L_s, L_t at T = 1 and L_t + 1e-7 in the denominator;
    * ``effdstl`` (EffDstl's stage 1, spec §4.2): L_s, L_t at T = τ, no ε. Where L_t = 0 (a teacher
      certain of the label in float precision) the weight is 1, or 0 when L_s = 0 too (never NaN).
    Labels `target` are class indices (B,). float16/bfloat16 logits are computed in float32, float64 stays.
    """
    if variant not in ("official", "effdstl"):
        raise ValueError(f"unknown wsl variant {variant!r}; valid choices: official, effdstl")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if student_logits.ndim != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"wsl needs B×K student and teacher logits of one shape, got {tuple(student_logits.shape)} "
            f"and {tuple(teacher_logits.shape)}"
        )
    if target.shape != student_logits.shape[:1] or target.dtype != torch.long:
        raise ValueError(
            f"wsl needs B class indices (int64) as target, got {target.dtype} {tuple(target.shape)}"
        )
    if student_logits.shape[0] == 0:
        raise ValueError("wsl of an empty batch is undefined")
    dtype = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
    s, t = student_logits.to(dtype), teacher_logits.to(dtype)
    log_p_s = F.log_softmax(s / temperature, dim=1)
    q_t = F.softmax(t / temperature, dim=1)
    soft_ce = -(q_t * log_p_s).sum(dim=1)
    with torch.no_grad():
        scale = 1.0 if variant == "official" else temperature
        rows = torch.arange(s.shape[0], device=s.device)
        ce_s = -F.log_softmax(s.detach() / scale, dim=1)[rows, target]
        ce_t = -F.log_softmax(t.detach() / scale, dim=1)[rows, target]
        if variant == "official":
            ratio = ce_s / (ce_t + 1e-7)
        else:  # CE_t = 0 (or −0.0): ratio +inf where the student still errs, 0 where it does not
            ratio = torch.where(ce_t > 0, ce_s / ce_t, torch.where(ce_s > 0, torch.inf, 0.0))
        weight = 1.0 - torch.exp(-ratio.clamp_min(0.0))
    return temperature**2 * (weight * soft_ce).mean()
