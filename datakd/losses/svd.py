"""Batched thin SVD of feature maps with a NaN-guarded backward through the right singular vectors.

KD-SVD (Lee et al. 2018) and MHGD (Lee & Song 2019) compress a B×HW×C feature map into its leading right
singular vectors (C-dimensional). The decomposition is computed from the smaller Gram matrix with
``torch.linalg.eigh`` in float64 (``XᵀX`` when C ≤ HW, else ``XXᵀ``; the "eig" route of their code), and
differentiated with our own backward, following Townsend (2016), "Differentiating the singular value
decomposition", for the V̄ and s̄ parts (no loss here reads U):

    X̄ = U [diag(s̄) + S (F ∘ (VᵀV̄ − V̄ᵀV))] Vᵀ + U S⁻¹ V̄ᵀ (I − V Vᵀ),    F_ij = 1 / (s_j² − s_i²), i ≠ j.

The second term only exists when C > HW. Degenerate singular values (s_i = s_j) or zero ones make F or
S⁻¹ infinite; those entries are set to zero and any non-finite gradient entry is zeroed (the released code's
``removenan``), so a rank-deficient ReLU map never produces NaN.
"""

from __future__ import annotations

from typing import Any

import torch

EPS = 1e-12


def _zero_nonfinite(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros((), dtype=x.dtype, device=x.device))


def thin_svd(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U, s, V) of a batch of matrices x (B×N×D), r = min(N, D) components, s descending, float64."""
    x = x.double()
    n, d = x.shape[-2:]
    if d <= n:
        evals, evecs = torch.linalg.eigh(x.transpose(-1, -2) @ x)
        s = evals.flip(-1).clamp_min(0).sqrt()
        v = evecs.flip(-1)
        u = _zero_nonfinite((x @ v) / s.unsqueeze(-2))
        u = torch.where(s.unsqueeze(-2) > EPS, u, torch.zeros_like(u))
    else:
        evals, evecs = torch.linalg.eigh(x @ x.transpose(-1, -2))
        s = evals.flip(-1).clamp_min(0).sqrt()
        u = evecs.flip(-1)
        v = _zero_nonfinite((x.transpose(-1, -2) @ u) / s.unsqueeze(-2))
        v = torch.where(s.unsqueeze(-2) > EPS, v, torch.zeros_like(v))
    return u, s, v


class _SingularVectors(torch.autograd.Function):
    """(s, V) of the thin SVD with the guarded backward of the module docstring."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u, s, v = thin_svd(x)
        ctx.save_for_backward(u, s, v)
        ctx.input_dtype = x.dtype
        return s.to(x.dtype), v.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad_s: torch.Tensor | None, grad_v: torch.Tensor | None) -> torch.Tensor:
        u, s, v = ctx.saved_tensors
        r = s.shape[-1]
        inner = torch.zeros(*s.shape, r, dtype=s.dtype, device=s.device)
        if grad_s is not None:
            inner = inner + torch.diag_embed(grad_s.double())
        complement = None
        if grad_v is not None:
            gv = grad_v.double()
            s2 = s * s
            f = 1.0 / (s2.unsqueeze(-2) - s2.unsqueeze(-1))  # F_ij = 1 / (s_j² − s_i²)
            eye = torch.eye(r, dtype=torch.bool, device=s.device)
            f = torch.where(eye | ~torch.isfinite(f), torch.zeros((), dtype=f.dtype, device=f.device), f)
            vt_gv = v.transpose(-1, -2) @ gv
            inner = inner + s.unsqueeze(-1) * (f * (vt_gv - vt_gv.transpose(-1, -2)))
            if v.shape[-2] > r:  # C > HW: the part of V̄ outside span(V)
                inv_s = torch.where(s > EPS, 1.0 / s, torch.zeros_like(s))
                projected = gv.transpose(-1, -2) - (gv.transpose(-1, -2) @ v) @ v.transpose(-1, -2)
                complement = u @ (inv_s.unsqueeze(-1) * projected)
        grad = u @ inner @ v.transpose(-1, -2)
        if complement is not None:
            grad = grad + complement
        return _zero_nonfinite(grad).to(ctx.input_dtype)


def singular_vectors(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values (B×r) and right singular vectors (B×D×r, columns) of x (B×N×D), differentiable."""
    return _SingularVectors.apply(x)


def feature_matrix(feature: torch.Tensor) -> torch.Tensor:
    """B×C×H×W feature map → B×HW×C matrix (rows = positions, columns = channels); B×C → B×1×C."""
    if feature.dim() == 2:
        return feature.unsqueeze(1)
    return feature.flatten(2).transpose(1, 2)
