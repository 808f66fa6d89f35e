"""CE and Hinton KD against an independent float64 computation of their formulas, and gradient checks."""

from __future__ import annotations

import math

import pytest
import torch

from datakd.losses import functional as LF


def reference_kd(s: torch.Tensor, t: torch.Tensor, tau: float) -> float:
    """τ²·(1/B)·Σ_b Σ_c p_t log(p_t/p_s), written with explicit loops in float64."""
    total = 0.0
    for b in range(s.shape[0]):
        zs = [float(v) / tau for v in s[b]]
        zt = [float(v) / tau for v in t[b]]
        ls = math.log(sum(math.exp(v) for v in zs))
        lt = math.log(sum(math.exp(v) for v in zt))
        for c in range(len(zs)):
            pt = math.exp(zt[c] - lt)
            total += pt * ((zt[c] - lt) - (zs[c] - ls))
    return tau * tau * total / s.shape[0]


@pytest.mark.parametrize("tau", [1.0, 4.0, 0.5])
def test_kd_matches_float64_reference(tau: float) -> None:
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(5, 7, generator=g) * 3, torch.randn(5, 7, generator=g) * 3
    assert LF.kd(s, t, tau).item() == pytest.approx(reference_kd(s, t, tau), rel=1e-5, abs=1e-6)


def test_kd_hand_derived_value() -> None:
    # Two classes, τ=1: p_t = (0.5, 0.5); s = (log 3, 0) → p_s = (0.75, 0.25).
    # KL = 0.5 log(0.5/0.75) + 0.5 log(0.5/0.25) = 0.5 log(4/3) ≈ 0.143841
    s = torch.tensor([[math.log(3.0), 0.0]])
    t = torch.zeros(1, 2)
    assert LF.kd(s, t, 1.0).item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)
    # τ² scaling: at τ=2 the same logits give 4·KL at the softened distributions.
    assert LF.kd(s * 2, t, 2.0).item() == pytest.approx(4 * 0.5 * math.log(4 / 3), rel=1e-6)


def test_kd_zero_when_equal_and_reductions() -> None:
    s = torch.randn(4, 10)
    assert LF.kd(s, s.clone(), 4.0).abs().item() < 1e-6
    t = torch.randn(4, 10)
    per = LF.kd(s, t, 2.0, reduction="none")
    assert per.shape == (4,)
    assert per.mean().item() == pytest.approx(LF.kd(s, t, 2.0).item(), rel=1e-6)
    assert LF.kd(s, t, 2.0, reduction="sum").item() == pytest.approx(per.sum().item(), rel=1e-6)
    with pytest.raises(ValueError, match="valid choices"):
        LF.kd(s, t, 2.0, reduction="mean_of_everything")


def test_kd_gradient_check() -> None:
    g = torch.Generator().manual_seed(2)
    s = torch.randn(3, 5, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.randn(3, 5, dtype=torch.float64, generator=g)

    # functional.kd computes in float32; check the float64 core it is built from.
    def fn(x: torch.Tensor) -> torch.Tensor:
        q = torch.softmax(t / 3.0, dim=1)
        return 9.0 * (torch.xlogy(q, q) - q * torch.log_softmax(x / 3.0, dim=1)).sum(1).mean()

    assert torch.autograd.gradcheck(fn, (s,))
    # And the analytic gradient of the library function: dL/ds = τ·(σ_τ(s) − σ_τ(t)) / B.
    s32 = s.detach().float().requires_grad_()
    LF.kd(s32, t.float(), 3.0).backward()
    expected = 3.0 * (torch.softmax(s.detach() / 3, 1) - torch.softmax(t / 3, 1)) / 3
    assert torch.allclose(s32.grad.double(), expected, atol=1e-6)


def test_kl_to_targets_accepts_one_hot_and_soft_ce_differs_by_entropy() -> None:
    s = torch.randn(3, 4)
    q = torch.tensor([[1.0, 0, 0, 0], [0.25, 0.25, 0.25, 0.25], [0.0, 0.5, 0.5, 0.0]])
    kl = LF.kl_to_targets(s, q, 1.0, reduction="none")
    ce = LF.soft_cross_entropy(s, q, 1.0, reduction="none")
    entropy = -(torch.xlogy(q, q)).sum(1)
    assert torch.isfinite(kl).all()
    assert torch.allclose(ce - kl, entropy, atol=1e-5)
    with pytest.raises(ValueError, match="positive"):
        LF.kl_to_targets(s, q, 0.0)


def test_cross_entropy_hard_soft_and_smoothing() -> None:
    g = torch.Generator().manual_seed(3)
    s = torch.randn(6, 5, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    logp = torch.log_softmax(s, 1)
    assert LF.cross_entropy(s.float(), y).item() == pytest.approx(-logp[range(6), y].mean().item(), rel=1e-5)
    eps = 0.1
    smooth = (1 - eps) * torch.nn.functional.one_hot(y, 5).double() + eps / 5
    ref = -(smooth * logp).sum(1).mean().item()
    assert LF.cross_entropy(s.float(), y, label_smoothing=eps).item() == pytest.approx(ref, rel=1e-5)
    assert LF.cross_entropy(s.float(), smooth.float()).item() == pytest.approx(ref, rel=1e-5)
