"""Pure loss functions (no modules, no state), each written once and reused by every method.

Conventions: logits are B×K; "batchmean" = sum over classes, mean over the batch; computations run in
float32 even under autocast (float64 inputs stay float64, so tests can gradcheck the library functions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from datakd.errors import DatakdError

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


# ------------------------------------------------------------------------ DKD (Zhao et al., CVPR 2022)
def non_target_logits(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The B×(K−1) logits of every class except each row's target class, in class order.

    A gather, so the target class is removed exactly (no large negative constant is subtracted from it).
    """
    b, k = logits.shape
    columns = torch.arange(k - 1, device=logits.device).expand(b, k - 1)
    columns = columns + (columns >= target.unsqueeze(1)).long()
    return logits.gather(1, columns)


def target_vs_rest_logits(
    logits: torch.Tensor, target: torch.Tensor, others: torch.Tensor, temperature: float
) -> torch.Tensor:
    """B×2 logits whose σ_τ is the binary distribution [p_target, 1 − p_target] of σ_τ(logits).

    The second column is τ·logsumexp(non-target logits / τ): the log of the summed non-target mass,
    computed in log space, so 1 − p_target never suffers cancellation or log(0) when p_target → 1.
    """
    own = logits.gather(1, target.unsqueeze(1))
    rest = temperature * torch.logsumexp(others / temperature, dim=1, keepdim=True)
    return torch.cat([own, rest], dim=1)


def dkd_parts(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    temperature: float = 4.0,
    reduction: str = "batchmean",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD) of Decoupled KD, each τ²-scaled, per-sample with reduction="none".

    TCKD = τ²·KL(b_t ‖ b_s) between the binary target-vs-rest distributions; NCKD = τ²·KL(p̂_t ‖ p̂_s)
    between the distributions renormalised over the K−1 non-target classes (with K = 2 it is 0).
    """
    if student_logits.ndim != 2 or student_logits.shape != teacher_logits.shape:
        raise DatakdError(
            f"dkd needs B×K student and teacher logits of one shape, got {tuple(student_logits.shape)} "
            f"and {tuple(teacher_logits.shape)}"
        )
    if student_logits.shape[1] < 2:
        raise DatakdError(f"dkd needs at least 2 classes, got {student_logits.shape[1]}")
    if target.dtype != torch.long or target.shape != student_logits.shape[:1]:
        raise DatakdError(
            f"dkd needs one hard label (int64) per sample, got a {target.dtype} tensor of shape "
            f"{tuple(target.shape)} for {student_logits.shape[0]} samples"
        )
    s, t = _upcast(student_logits), _upcast(teacher_logits)
    s_rest, t_rest = non_target_logits(s, target), non_target_logits(t, target)
    s_bin = target_vs_rest_logits(s, target, s_rest, temperature)
    t_bin = target_vs_rest_logits(t, target, t_rest, temperature)
    tckd = kl_to_targets(s_bin, F.softmax(t_bin / temperature, dim=1), temperature, reduction)
    nckd = kl_to_targets(s_rest, F.softmax(t_rest / temperature, dim=1), temperature, reduction)
    return tckd, nckd


def dkd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    reduction: str = "batchmean",
) -> torch.Tensor:
    """Decoupled KD: α·TCKD + β·NCKD (each τ²·KL), batch-mean by default (per-sample with "none")."""
    tckd, nckd = dkd_parts(student_logits, teacher_logits, target, temperature, reduction)
    return alpha * tckd + beta * nckd


# ------------------------------------------------------------------------ DIST (Huang et al., NeurIPS 2022)
def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of matching rows of two B×N matrices, cov / (‖a−ā‖·‖b−b̄‖ + eps).

    The eps sits in the denominator as in the authors' code: a row with no variance (a constant row)
    gets correlation 0 instead of NaN.
    """
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def _check_pair(student_probs: torch.Tensor, teacher_probs: torch.Tensor) -> None:
    if student_probs.ndim != 2 or student_probs.shape != teacher_probs.shape:
        raise DatakdError(
            f"dist needs B×K student and teacher predictions of one shape, got "
            f"{tuple(student_probs.shape)} and {tuple(teacher_probs.shape)}"
        )


def inter_class_relation(
    student_probs: torch.Tensor, teacher_probs: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """1 − mean over samples of the Pearson correlation between the student's and teacher's class
    distributions (DIST's inter-class relation, unscaled). Needs at least 2 classes."""
    _check_pair(student_probs, teacher_probs)
    if student_probs.shape[1] < 2:
        raise DatakdError(
            f"dist: the inter-class relation needs at least 2 classes, got {student_probs.shape[1]}"
        )
    return 1.0 - pearson_rows(student_probs, teacher_probs, eps).mean()


def intra_class_relation(
    student_probs: torch.Tensor, teacher_probs: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """1 − mean over classes of the Pearson correlation, across the batch, between the student's and
    teacher's probabilities of that class (DIST's intra-class relation, unscaled).

    A batch of 1 has no variance to correlate; that raises instead of returning a meaningless constant.
    """
    _check_pair(student_probs, teacher_probs)
    if student_probs.shape[0] < 2:
        raise DatakdError(
            "dist: the intra-class relation correlates each class over the batch and is undefined for a "
            "batch of 1; use a batch of at least 2 (or gamma: 0)"
        )
    return 1.0 - pearson_rows(student_probs.t(), teacher_probs.t(), eps).mean()


def dist_from_probs(
    student_probs: torch.Tensor,
    teacher_probs: torch.Tensor,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
    eps: float = 1e-8,
) -> torch.Tensor:
    """τ²·(β·inter + γ·intra) for given σ_τ predictions (a relation with weight 0 is not computed)."""
    zero = student_probs.new_zeros(())
    inter = inter_class_relation(student_probs, teacher_probs, eps) if beta else zero
    intra = intra_class_relation(student_probs, teacher_probs, eps) if gamma else zero
    return temperature**2 * (beta * inter + gamma * intra)


def dist(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
    eps: float = 1e-8,
) -> torch.Tensor:
    """DIST: τ²·(β·inter + γ·intra) on σ_τ of student and teacher logits (a scalar over the batch)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    p_s = F.softmax(_upcast(student_logits) / temperature, dim=1)
    p_t = F.softmax(_upcast(teacher_logits) / temperature, dim=1)
    return dist_from_probs(p_s, p_t, beta, gamma, temperature, eps)


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
