"""Pure formulas of role-wise KD's II-KD (Fu et al. 2020, Eq. 10) as released in ``role-kd``:
RKD on L2-normalised logits (intra), KD-SVD and MHGD between consecutive feature taps (inter).

Shapes: logits B×K; features B×C×H×W (or B×C); singular vectors B×C. Everything is computed in float32 or
float64 as given; teacher inputs are treated as constants (the teacher runs without gradient).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from datakd.losses.svd import feature_matrix, singular_vectors


def l2_normalize(x: torch.Tensor, dim: int) -> torch.Tensor:
    """x / sqrt(max(Σx², 1e-12)) along `dim` (TensorFlow's ``l2_normalize``; zero vectors stay zero)."""
    return x * torch.rsqrt(x.pow(2).sum(dim=dim, keepdim=True).clamp_min(1e-12))


def huber(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean Huber loss with δ = 1: ½d² where |d| ≤ 1, |d| − ½ elsewhere."""
    d = (x - y).abs()
    return torch.where(d <= 1.0, 0.5 * d * d, d - 0.5).mean()


def rkd_distance_potential(z: torch.Tensor) -> torch.Tensor:
    """Pairwise distances / their mean (role-kd: sqrt(max(·, 1e-12)), so the diagonal is 1e-6 and the mean
    runs over all B² entries)."""
    sq = z.pow(2).sum(dim=1)
    dist = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * z @ z.t()).clamp_min(1e-12).sqrt()
    mu = dist.sum() / (dist > 0).sum()
    return dist / (mu + 1e-8)


def rkd_angle_potential(z: torch.Tensor) -> torch.Tensor:
    """A[i, j, k] = cos of the angle at anchor i between j and k (normalised differences, B×B×B)."""
    e = l2_normalize(z.unsqueeze(0) - z.unsqueeze(1), dim=2)  # e[i, j] = z_j − z_i
    return e @ e.transpose(1, 2)


def rkd_logits(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    distance_weight: float = 50.0,
    angle_weight: float = 100.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weighted distance term, weighted angle term) of RKD on L2-normalised logits (role-kd: 50 and 100).

    A batch of one has no pairs: both potentials are constant and the loss is exactly 0.
    """
    zs = l2_normalize(student_logits, dim=1)
    zt = l2_normalize(teacher_logits.detach(), dim=1)
    distance = huber(rkd_distance_potential(zs), rkd_distance_potential(zt))
    angle = huber(rkd_angle_potential(zs), rkd_angle_potential(zt))
    return distance_weight * distance, angle_weight * angle


def leading_vectors(feature: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k leading singular values (L2-normalised over the k) and right singular vectors (B×C×k, each
    column L2-normalised, signs by `canonical_signs`) of a feature map, differentiable through svd.py."""
    s, v = singular_vectors(feature_matrix(feature))
    s = l2_normalize(s[:, :k], dim=1)
    v = l2_normalize(v[:, :, :k], dim=1)
    return s, v * canonical_signs(v)


def canonical_signs(v: torch.Tensor) -> torch.Tensor:
    """±1 per column (B×1×k, no gradient) making each vector's largest-magnitude entry positive.

    A singular vector's sign is arbitrary (TensorFlow's SVD returns whatever LAPACK gives); KD-SVD's RBF
    between consecutive taps depends on it, so we fix this convention.
    """
    index = v.detach().abs().argmax(dim=1, keepdim=True)
    sign = torch.sign(v.detach().gather(1, index))
    return torch.where(sign == 0, torch.ones_like(sign), sign)


def align_to_teacher(v_student: torch.Tensor, v_teacher: torch.Tensor) -> torch.Tensor:
    """For each teacher vector (B×C×kt), the student vector (of B×C×ks) with the largest |cos|, sign-flipped
    to agree with it: B×C×kt. The selection itself carries no gradient."""
    cosine = v_student.transpose(1, 2) @ v_teacher  # B×ks×kt
    best = cosine.abs() == cosine.abs().amax(dim=1, keepdim=True)
    mask = torch.where(best, torch.sign(cosine), torch.zeros_like(cosine)).detach()
    return v_student @ mask


def rbf_pairs(v: torch.Tensor, v_prev: torch.Tensor) -> torch.Tensor:
    """exp(−(v[a] − v_prev[b])² / 8) for all channel pairs (a, b): B×C_i×C_{i−1} (vectors are B×C)."""
    return torch.exp(-(v.unsqueeze(2) - v_prev.unsqueeze(1)).pow(2) / 8.0)


def kd_svd(
    student_vectors: list[torch.Tensor],
    teacher_vectors: list[torch.Tensor],
    teacher_sigmas: list[torch.Tensor],
) -> torch.Tensor:
    """KD-SVD's transfer loss: for consecutive taps, Σ (RBF_S − RBF_T)² over batch and channel pairs, with
    every vector scaled by the teacher's (normalised) leading singular value; non-finite entries count 0."""
    scaled_s = [v * s.view(-1, 1) for v, s in zip(student_vectors, teacher_sigmas)]
    scaled_t = [v * s.view(-1, 1) for v, s in zip(teacher_vectors, teacher_sigmas)]
    total = student_vectors[0].new_zeros(())
    for i in range(1, len(scaled_s)):
        diff = rbf_pairs(scaled_s[i], scaled_s[i - 1]) - rbf_pairs(scaled_t[i], scaled_t[i - 1]).detach()
        sq = diff.pow(2)
        total = total + torch.where(torch.isfinite(sq), sq, torch.zeros_like(sq)).sum()
    return total


def graph_kl(g_student: torch.Tensor, g_teacher: torch.Tensor) -> torch.Tensor:
    """MHGD's Σ softmax(G_S)·(log softmax(G_S) − log softmax(G_T)) over heads and rows (KL(S‖T), summed)."""
    log_s = F.log_softmax(g_student, dim=-1)
    return (log_s.exp() * (log_s - F.log_softmax(g_teacher.detach(), dim=-1))).sum()


def clip_by_norm(g: torch.Tensor, bound: torch.Tensor | float) -> torch.Tensor:
    """g · bound / max(‖g‖, bound) (TensorFlow's clip_by_norm; a zero bound gives a zero gradient)."""
    bound = torch.as_tensor(bound, dtype=g.dtype, device=g.device)
    norm = g.norm()
    scale = torch.where(
        norm > bound, bound / norm.clamp_min(1e-30), torch.ones((), dtype=g.dtype, device=g.device)
    )
    return g * scale


def clip_schedule(epoch: float) -> float:
    """s(e) = 1 / (1 + e^(−e)), set to 1 once above 1 − 1e-8 (released code's sigmoid(epoch − init_epoch))."""
    import math

    value = 1.0 / (1.0 + math.exp(-epoch)) if epoch > -700 else 0.0
    return 1.0 if value > 1.0 - 1e-8 else value
