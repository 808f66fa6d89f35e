"""Pure formulas of the feature- and relation-based baselines (no modules, no state).

Each function takes feature tensors and returns a scalar, so tests can check it against an independent
computation and `gradcheck` it in float64. The loss terms (``fitnet.py``, ``at.py``, ...) only pick the
taps, run their connectors and call these. Conventions follow RepDistiller (CRD paper's benchmark code),
whose CIFAR-100 numbers the recipes reproduce; where a paper and that code differ, the docstring says so.

Relations over a batch are undefined for a single sample: the relation losses (SP, CC, RKD, PKT) then
return a documented constant (0) instead of NaN, so a size-1 tail batch never stops a run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------- shapes


def match_spatial(fs: torch.Tensor, ft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive-average-pool the larger of two B×C×H×W maps to the smaller's H×W (RepDistiller's rule).

    Vectors (B×C) and maps of equal size are returned unchanged. Each spatial axis is pooled to the
    smaller of the two sizes, so non-square mismatches work too.
    """
    if fs.dim() != 4 or ft.dim() != 4 or fs.shape[-2:] == ft.shape[-2:]:
        return fs, ft
    size = (min(fs.shape[-2], ft.shape[-2]), min(fs.shape[-1], ft.shape[-1]))
    if tuple(fs.shape[-2:]) != size:
        fs = F.adaptive_avg_pool2d(fs, size)
    if tuple(ft.shape[-2:]) != size:
        ft = F.adaptive_avg_pool2d(ft, size)
    return fs, ft


# ----------------------------------------------------------------------------------------- FitNet / AT


def hint_loss(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """FitNet hint loss: mean squared error between the regressed student map and the teacher map."""
    return F.mse_loss(fs, ft)


def attention_map(f: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """AT's spatial attention: mean over channels of |f|^p, flattened and L2-normalised per sample (B×HW)."""
    return F.normalize(f.abs().pow(p).mean(dim=1).flatten(1), dim=1)


def attention_loss(fs: torch.Tensor, ft: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Attention transfer for one stage pair: mean over B×HW of the squared attention-map difference.

    Maps of different sizes are first average-pooled to the smaller size (`match_spatial`). Zagoruyko &
    Komodakis write β/2·‖·‖_p; RepDistiller's mean of squares with β = 1000 is what the recipes use.
    """
    fs, ft = match_spatial(fs, ft)
    return (attention_map(fs, p) - attention_map(ft, p)).pow(2).mean()


# ----------------------------------------------------------------------------------------- SP


def similarity_matrix(f: torch.Tensor) -> torch.Tensor:
    """SP's B×B batch Gram matrix of the flattened features, each row L2-normalised."""
    flat = f.flatten(1)
    return F.normalize(flat @ flat.t(), dim=1)


def similarity_preserving_loss(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """Similarity preserving (Tung & Mori 2019): ‖G_t − G_s‖_F² / b² with row-normalised Gram matrices.

    A batch of one gives 1×1 matrices that are both 1 after normalisation: the loss is 0.
    """
    b = fs.shape[0]
    return (similarity_matrix(ft) - similarity_matrix(fs)).pow(2).sum() / (b * b)


# ----------------------------------------------------------------------------------------- CC


def taylor_rbf_kernel(f: torch.Tensor, gamma: float = 0.4, order: int = 2) -> torch.Tensor:
    """CC's correlation matrix: the Gaussian RBF kernel exp(−γ‖x−y‖²) of L2-normalised features,
    approximated by its order-P Taylor series in the inner product s = x·y:
    Σ_{p=0..P} e^{−2γ} (2γ)^p / p! · s^p (exact as P → ∞ because ‖x−y‖² = 2 − 2s on the unit sphere).
    """
    unit = F.normalize(f.flatten(1), dim=1)
    s = unit @ unit.t()
    kernel = torch.zeros_like(s)
    power = torch.ones_like(s)
    for p in range(order + 1):
        if p:
            power = power * s
        kernel = kernel + math.exp(-2.0 * gamma) * (2.0 * gamma) ** p / math.factorial(p) * power
    return kernel


def correlation_congruence_loss(
    fs: torch.Tensor, ft: torch.Tensor, gamma: float = 0.4, order: int = 2
) -> torch.Tensor:
    """Correlation congruence (Peng et al. 2019): ‖C_t − C_s‖_F² / b² with `taylor_rbf_kernel` matrices."""
    return (taylor_rbf_kernel(ft, gamma, order) - taylor_rbf_kernel(fs, gamma, order)).pow(2).mean()


def correlation_congruence_repdistiller(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """RepDistiller's CC code (sent to CRD's authors by the CC authors), which produced CRD's CC rows:
    with Δ_i = |s_i − t_i|, the mean over consecutive pairs i, i+1 of Σ_d Δ_i,d·Δ_{i+1},d.

    A batch of one has no consecutive pair: the loss is 0.
    """
    delta = (fs.flatten(1) - ft.flatten(1)).abs()
    if delta.shape[0] < 2:
        return delta.sum() * 0.0
    return (delta[:-1] * delta[1:]).sum(dim=1).mean()


# ----------------------------------------------------------------------------------------- RKD


def pairwise_distances(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Euclidean distance matrix of the rows of `e` (B×D); squared distances are clamped at `eps`
    before the square root (a finite gradient for coincident points) and the diagonal is exactly 0."""
    sq = e.pow(2).sum(dim=1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * (e @ e.t())).clamp_min(eps).sqrt()
    off_diagonal = 1.0 - torch.eye(e.shape[0], dtype=e.dtype, device=e.device)
    return d * off_diagonal


def normalized_distances(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """RKD's ψ_D: pairwise distances divided by their mean over the non-zero (off-diagonal) pairs.

    With fewer than two samples there is no pair; the (all-zero) matrix is returned unscaled.
    """
    d = pairwise_distances(e, eps)
    count = (d > 0).sum().clamp_min(1)
    mean = d.sum() / count
    return d / mean.clamp_min(torch.finfo(d.dtype).tiny)


def angle_matrix(e: torch.Tensor) -> torch.Tensor:
    """RKD's ψ_A: B×B×B cosines, entry [i, j, k] = cos of the angle at e_i between e_j and e_k.

    Degenerate triplets (j = i or k = i) have a zero difference vector and give 0, as in the RKD code.
    """
    diff = e.unsqueeze(0) - e.unsqueeze(1)  # [i, j] = e_j − e_i
    unit = F.normalize(diff, p=2, dim=2)
    return unit @ unit.transpose(1, 2)


def rkd_distance_loss(es: torch.Tensor, et: torch.Tensor) -> torch.Tensor:
    """Huber (smooth-L1, δ = 1) between normalised distance matrices, mean over the B² entries."""
    return F.smooth_l1_loss(normalized_distances(es.flatten(1)), normalized_distances(et.flatten(1)))


def rkd_angle_loss(es: torch.Tensor, et: torch.Tensor) -> torch.Tensor:
    """Huber (smooth-L1, δ = 1) between angle tensors, mean over the B³ entries."""
    return F.smooth_l1_loss(angle_matrix(es.flatten(1)), angle_matrix(et.flatten(1)))


# ----------------------------------------------------------------------------------------- PKT


def pkt_probabilities(f: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """PKT's conditional probabilities: cosine similarities mapped to [0, 1] by (s + 1)/2 and each row
    divided by its sum (the sample itself included, as in the authors' code)."""
    flat = f.flatten(1)
    unit = flat / (flat.norm(dim=1, keepdim=True) + eps)
    sim = (unit @ unit.t() + 1.0) / 2.0
    return sim / sim.sum(dim=1, keepdim=True)


def pkt_loss(fs: torch.Tensor, ft: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Probabilistic knowledge transfer (Passalis & Tefas 2018): KL(P_t ‖ P_s) of the conditional
    probabilities, averaged over the B² entries with `eps` inside the log ratio (authors' code).
    A batch of one gives the 1×1 matrix [1] on both sides: the loss is 0."""
    pt, ps = pkt_probabilities(ft, eps), pkt_probabilities(fs, eps)
    return (pt * torch.log((pt + eps) / (ps + eps))).mean()


# ----------------------------------------------------------------------------------------- VID


def gaussian_nll(mean: torch.Tensor, target: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """VID's negative log-likelihood of `target` under N(mean, variance) with one variance per channel,
    without the constant ½·log 2π: mean over all elements of ½((t − μ)²/σ² + log σ²)."""
    shape = (1, -1) + (1,) * (mean.dim() - 2)
    var = variance.view(shape)
    return (0.5 * ((mean - target).pow(2) / var + torch.log(var))).mean()


# ----------------------------------------------------------------------------------------- ReviewKD

HCL_LEVELS = (4, 2, 1)


def hierarchical_context_loss(
    fs: Sequence[torch.Tensor], ft: Sequence[torch.Tensor], levels: Sequence[int] = HCL_LEVELS
) -> torch.Tensor:
    """ReviewKD's HCL: per level pair, the MSE of the full maps plus MSEs of the maps average-pooled to
    l×l for each l in `levels` smaller than the map, weighted 1, ½, ¼, ... and divided by the weight sum;
    summed over the pairs."""
    total = fs[0].new_zeros(())
    for s, t in zip(fs, ft, strict=True):
        loss = F.mse_loss(s, t)
        weight, weight_sum = 1.0, 1.0
        for level in levels:
            if level >= s.shape[-2]:
                continue
            weight /= 2.0
            pooled = F.mse_loss(F.adaptive_avg_pool2d(s, level), F.adaptive_avg_pool2d(t, level))
            loss = loss + weight * pooled
            weight_sum += weight
        total = total + loss / weight_sum
    return total


# ----------------------------------------------------------------------------------------- CRD


def nce_contrast_loss(
    pos_logits: torch.Tensor,
    neg_logits: torch.Tensor,
    log_noise: torch.Tensor,
    neg_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """CRD's NCE objective (Tian et al. 2020, Eq. 18) for one anchor side, in log space.

    With scores e = exp(v·m/τ), RepDistiller's model probability is P = e/Z and the noise probability is
    Pn = 1/N, so P/(P + m·Pn) = e/(e + m·Z/N). Here `pos_logits` (B) and `neg_logits` (B×K) are v·m/τ and
    `log_noise` (scalar or B) is log(m·Z/N), m being each row's number of negatives; then
    log D1 = ℓ⁺ − log(e^{ℓ⁺} + e^{log_noise}) and log D0 = log_noise − log(e^{ℓ⁻} + e^{log_noise}), and the
    loss is −(Σ_b log D1 + Σ_{b,k} log D0)/B. `neg_mask` (B×K, bool) drops negatives (e.g. same-class
    entries of a queue).
    """
    noise = log_noise if log_noise.dim() == 0 else log_noise.view(-1)
    log_d1 = pos_logits - torch.logaddexp(pos_logits, noise)
    noise_col = noise if noise.dim() == 0 else noise.unsqueeze(1)
    log_d0 = noise_col - torch.logaddexp(neg_logits, noise_col)
    if neg_mask is not None:
        log_d0 = torch.where(neg_mask, log_d0, torch.zeros_like(log_d0))
    return -(log_d1.sum() + log_d0.sum()) / pos_logits.shape[0]
