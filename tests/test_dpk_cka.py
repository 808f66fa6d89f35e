"""Minibatch CKA / unbiased HSIC (DPK Eq. 6–7) against independent float64 formulations and its properties."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from datakd.errors import DatakdError
from datakd.metrics import (
    MinibatchCKA,
    cka_from_hsic,
    cka_minibatch,
    gram_linear,
    hsic_terms,
    hsic_unbiased,
)


def hsic_u_statistic(k: list[list[float]], l: list[list[float]]) -> float:
    """Song et al. (2012) unbiased HSIC as the U-statistic over distinct index tuples (explicit loops):

    (1/(n)₂) Σ_{i≠j} k_ij l_ij + (1/(n)₄) Σ_{i,j,q,r distinct} k_ij l_qr
    − (2/(n)₃) Σ_{i,j,q distinct} k_ij l_iq.
    """
    n = len(k)
    first = sum(k[i][j] * l[i][j] for i, j in itertools.permutations(range(n), 2))
    second = sum(k[i][j] * l[q][r] for i, j, q, r in itertools.permutations(range(n), 4))
    third = sum(k[i][j] * l[i][q] for i, j, q in itertools.permutations(range(n), 3))
    perm = lambda m: math.perm(n, m)  # noqa: E731
    return first / perm(2) + second / perm(4) - 2.0 * third / perm(3)


def hsic_eq6_loops(k: list[list[float]], l: list[list[float]]) -> float:
    """DPK Eq. 6 term by term with explicit loops (diagonals zeroed)."""
    n = len(k)
    kt = [[0.0 if i == j else k[i][j] for j in range(n)] for i in range(n)]
    lt = [[0.0 if i == j else l[i][j] for j in range(n)] for i in range(n)]
    trace = sum(kt[i][j] * lt[j][i] for i in range(n) for j in range(n))
    sum_k = sum(map(sum, kt))
    sum_l = sum(map(sum, lt))
    kl1 = sum(kt[i][j] * lt[j][q] for i in range(n) for j in range(n) for q in range(n))
    return (trace + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * kl1) / (n * (n - 3))


def hsic_u_centred(k: torch.Tensor, l: torch.Tensor) -> float:
    """A third formulation: ⟨U(K), U(L)⟩ / (n(n−3)) with Székely–Rizzo U-centring."""

    def u_centre(a: torch.Tensor) -> torch.Tensor:
        n = a.shape[0]
        a = a.clone().fill_diagonal_(0.0)
        rows = a.sum(1, keepdim=True) / (n - 2)
        cols = a.sum(0, keepdim=True) / (n - 2)
        u = a - rows - cols + a.sum() / ((n - 1) * (n - 2))
        return u.fill_diagonal_(0.0)

    n = k.shape[0]
    return float((u_centre(k) * u_centre(l)).sum() / (n * (n - 3)))


def grams(x: torch.Tensor) -> list[list[float]]:
    flat = x.double().reshape(x.shape[0], -1)
    return [[float(flat[i] @ flat[j]) for j in range(len(flat))] for i in range(len(flat))]


@pytest.mark.parametrize("n", [4, 5, 7])
def test_hsic_matches_u_statistic_and_eq6_loops(n: int) -> None:
    g = torch.Generator().manual_seed(n)
    x, y = torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randn(n, 3, 2, generator=g)
    y = y.double() + 0.5 * x[:, :1, None]  # some dependence
    k, l = grams(x), grams(y)
    ours = float(hsic_unbiased(gram_linear(x), gram_linear(y)))
    assert ours == pytest.approx(hsic_u_statistic(k, l), rel=1e-9, abs=1e-12)
    assert ours == pytest.approx(hsic_eq6_loops(k, l), rel=1e-9, abs=1e-12)
    kt, lt = torch.tensor(k, dtype=torch.float64), torch.tensor(l, dtype=torch.float64)
    assert ours == pytest.approx(hsic_u_centred(kt, lt), rel=1e-9, abs=1e-12)


def test_cka_matches_float64_reference_on_feature_maps() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 4, 3, 3, generator=g)  # B×C×H×W maps of different sizes on the two sides
    y = torch.randn(6, 8, 2, 2, generator=g) + x.mean(1, keepdim=True)[:, :, :2, :2]
    k, l = grams(x), grams(y)
    expected = hsic_eq6_loops(k, l) / math.sqrt(hsic_eq6_loops(k, k) * hsic_eq6_loops(l, l))
    assert float(cka_minibatch(x, y)) == pytest.approx(expected, rel=1e-5)
    assert float(cka_minibatch(y, x)) == pytest.approx(expected, rel=1e-5)  # symmetric


def test_cka_properties() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 20, generator=g)
    y = torch.randn(32, 12, generator=g) + x[:, :12]
    base = float(cka_minibatch(x, y))
    assert float(cka_minibatch(x, x)) == pytest.approx(1.0, abs=1e-6)
    # Invariant to isotropic scaling and to orthogonal transforms of either side.
    assert float(cka_minibatch(7.5 * x, 0.01 * y)) == pytest.approx(base, abs=1e-5)
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=g))
    assert float(cka_minibatch(x @ q, y)) == pytest.approx(base, abs=1e-5)
    assert float(cka_minibatch(x @ q, 3.0 * x)) == pytest.approx(1.0, abs=1e-5)
    assert 0.0 < base < 1.0


def test_cka_of_independent_data_is_near_zero_at_large_n() -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2000, 10, generator=g), torch.randn(2000, 10, generator=g)
    assert abs(float(cka_minibatch(x, y))) < 0.02
    # With many features per sample the biased (plain centred) estimator is far from 0 on independent
    # data (≈ p/(n+p)), while the unbiased one is not: the reason DPK uses HSIC₁.
    x, y = torch.randn(400, 200, generator=g), torch.randn(400, 200, generator=g)
    xc, yc = x - x.mean(0), y - y.mean(0)
    biased = (xc.T @ yc).square().sum() / ((xc.T @ xc).square().sum() * (yc.T @ yc).square().sum()).sqrt()
    assert float(biased) > 0.25
    assert abs(float(cka_minibatch(x, y))) < 0.05


def test_batch_below_four_is_a_clear_error_and_four_works() -> None:
    x = torch.randn(3, 5)
    with pytest.raises(DatakdError, match="at least 4 samples"):
        cka_minibatch(x, x)
    with pytest.raises(DatakdError, match="at least 4"):
        hsic_unbiased(torch.eye(2), torch.eye(2))
    value = cka_minibatch(torch.randn(4, 5), torch.randn(4, 3))
    assert torch.isfinite(value) and -1.0 <= float(value) <= 1.0
    with pytest.raises(DatakdError, match="same samples"):
        hsic_terms(torch.randn(5, 2), torch.randn(6, 2))


def test_constant_features_give_zero_not_nan() -> None:
    x = torch.ones(8, 5) * 3.0
    y = torch.randn(8, 4)
    assert float(cka_minibatch(x, y)) == 0.0
    assert float(cka_from_hsic(torch.tensor(0.0), torch.tensor(0.0), torch.tensor(1.0))) == 0.0


def test_minibatch_cka_averages_hsic_terms_over_batches() -> None:
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(8, 6, generator=g), torch.randn(8, 5, generator=g)) for _ in range(3)]
    meter = MinibatchCKA()
    for x, y in batches:
        meter.update(x, y + x[:, :5])
    xy = xx = yy = 0.0
    for x, y in batches:
        k, l = grams(x), grams(y + x[:, :5])
        xy += hsic_eq6_loops(k, l) / 3
        xx += hsic_eq6_loops(k, k) / 3
        yy += hsic_eq6_loops(l, l) / 3
    assert meter.value() == pytest.approx(xy / math.sqrt(xx * yy), rel=1e-5)
    assert meter.batches == 3 and len(meter.per_batch) == 3
    x, y = batches[1]
    assert meter.per_batch[1] == pytest.approx(float(cka_minibatch(x, y + x[:, :5])), rel=1e-6)
    with pytest.raises(DatakdError, match="no batch"):
        MinibatchCKA().value()
