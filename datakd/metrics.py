"""Minibatch linear CKA with the unbiased HSIC estimator (Nguyen et al. 2021; DPK Eq. 6–7), no state.

Public names: ``hsic_unbiased(K, L)`` (HSIC₁ of two n×n Gram matrices) and ``cka_minibatch(x, y)`` (linear
CKA of one batch of features, flattened per sample). The one implementation the library has: DPK's mask
ratio, ``datakd cka`` and users' analysis scripts all call these.

DPK sets its mask ratio to 1 − CKA of the current batch's student and teacher stage features, and
`datakd cka` averages the same three HSIC terms over the batches of a dataset. Features are flattened
per sample (B×p), so maps of any channel count and resolution can be compared. The unbiased estimator
needs at least 4 samples (it divides by n(n−3)); smaller batches raise a DatakdError.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from datakd.errors import DatakdError

MIN_SAMPLES = 4


def _flatten(x: torch.Tensor, what: str) -> torch.Tensor:
    if x.dim() < 2:
        raise DatakdError(f"CKA needs a batch of features (B×...), got {what} of shape {tuple(x.shape)}")
    n = x.shape[0]
    if n < MIN_SAMPLES:
        raise DatakdError(
            f"minibatch CKA needs at least {MIN_SAMPLES} samples (unbiased HSIC divides by n(n-3)), "
            f"got a batch of {n}"
        )
    return x.detach().reshape(n, -1)


def gram_linear(x: torch.Tensor) -> torch.Tensor:
    """K = X Xᵀ of the flattened features, returned in float64 (the product itself runs in float32).

    float32 keeps the big B×p product fast on accelerators; the B×B result is small, so the
    cancellation-prone HSIC arithmetic after it is done in float64.
    """
    flat = _flatten(x, "features")
    work = flat if flat.dtype == torch.float64 else flat.float()
    return (work @ work.T).double()


def hsic_unbiased(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """HSIC₁(K, L) of Song et al. (2012), DPK Eq. 6; K̃, L̃ are K, L with zeroed diagonals.

    HSIC₁ = [tr(K̃L̃) + (1ᵀK̃1)(1ᵀL̃1)/((n−1)(n−2)) − 2/(n−2)·1ᵀK̃L̃1] / (n(n−3)).
    """
    n = k.shape[0]
    if k.shape != (n, n) or l.shape != (n, n):
        raise DatakdError(f"HSIC needs two n×n Gram matrices, got {tuple(k.shape)} and {tuple(l.shape)}")
    if n < MIN_SAMPLES:
        raise DatakdError(f"unbiased HSIC needs at least {MIN_SAMPLES} samples, got {n}")
    eye = torch.eye(n, dtype=torch.bool, device=k.device)
    kt = k.masked_fill(eye, 0.0)
    lt = l.masked_fill(eye, 0.0)
    trace = (kt * lt.T).sum()
    sums = kt.sum() * lt.sum() / ((n - 1) * (n - 2))
    cross = kt.sum(0) @ lt.sum(1)  # 1ᵀ K̃ L̃ 1 = (K̃ᵀ1)·(L̃1)
    return (trace + sums - 2.0 / (n - 2) * cross) / (n * (n - 3))


@dataclass
class HSICTerms:
    """The three HSIC₁ values CKA is built from: (X,Y), (X,X), (Y,Y)."""

    xy: torch.Tensor
    xx: torch.Tensor
    yy: torch.Tensor


def hsic_terms(x: torch.Tensor, y: torch.Tensor) -> HSICTerms:
    """HSIC₁ of one minibatch for the pairs (X,Y), (X,X), (Y,Y); x, y share the batch dimension."""
    if x.shape[0] != y.shape[0]:
        raise DatakdError(
            f"CKA needs the same samples on both sides, got batches {x.shape[0]} and {y.shape[0]}"
        )
    return hsic_terms_from_grams(gram_linear(x), gram_linear(y))


def hsic_terms_from_grams(k: torch.Tensor, l: torch.Tensor) -> HSICTerms:
    """The three HSIC₁ terms from Gram matrices (reuse one Gram across many pairs, as `datakd cka` does).

    A self-HSIC at rounding level (features without variation across the batch) is set to exactly 0.
    """
    return HSICTerms(hsic_unbiased(k, l), _self_hsic(k), _self_hsic(l))


def _self_hsic(k: torch.Tensor) -> torch.Tensor:
    value = hsic_unbiased(k, k)
    rounding = 1e-10 * k.square().mean()
    return torch.where(value > rounding, value, torch.zeros_like(value))


def cka_from_hsic(xy: torch.Tensor, xx: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
    """HSIC(X,Y)/sqrt(HSIC(X,X)·HSIC(Y,Y)), clamped to [−1, 1]; 0 when a side has no variation.

    The unbiased HSIC is an inner product of U-centred Gram matrices, so HSIC(X,X) ≥ 0 and |CKA| ≤ 1 up
    to rounding; a constant feature (zero self-HSIC) is taken as sharing no structure: CKA = 0, never NaN.
    """
    denom = (xx.clamp_min(0.0) * yy.clamp_min(0.0)).sqrt()
    ratio = xy / denom.clamp_min(torch.finfo(denom.dtype).tiny)
    return torch.where(denom > 0, ratio.clamp(-1.0, 1.0), torch.zeros_like(xy))


def cka_minibatch(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Minibatch linear CKA of one batch (k = 1 in DPK Eq. 7), a float64 scalar, no gradient."""
    with torch.no_grad():
        terms = hsic_terms(x, y)
        return cka_from_hsic(terms.xy, terms.xx, terms.yy)


@dataclass
class MinibatchCKA:
    """CKA averaged over k minibatches as in DPK Eq. 7: running sums of the three HSIC₁ terms.

    `update` also keeps each batch's own CKA (the values the paper ranks in its Fig. 5 heat maps).
    """

    sums: torch.Tensor = field(default_factory=lambda: torch.zeros(3, dtype=torch.float64))
    batches: int = 0
    per_batch: list[float] = field(default_factory=list)

    def update(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Add one batch of features (B×...); returns that batch's own CKA."""
        with torch.no_grad():
            return self.update_grams(gram_linear(x), gram_linear(y))

    def update_grams(self, k: torch.Tensor, l: torch.Tensor) -> float:
        """Add one batch given its two Gram matrices; returns that batch's own CKA."""
        terms = hsic_terms_from_grams(k, l)
        values = torch.stack([terms.xy, terms.xx, terms.yy]).cpu()
        self.sums += values
        self.batches += 1
        one = float(cka_from_hsic(*values))
        self.per_batch.append(one)
        return one

    def value(self) -> float:
        if self.batches == 0:
            raise DatakdError("minibatch CKA has seen no batch of at least 4 samples")
        return float(cka_from_hsic(*self.sums))
