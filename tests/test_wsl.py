"""WSL (weighted soft labels), both variants, against explicit float64 loops; gradients; edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from datakd.api.context import TermInputs, View
from datakd.errors import ConfigError, DatakdError
from datakd.losses import functional as LF
from datakd.losses.base import build_terms


def _log_softmax(z: list[float], temperature: float) -> list[float]:
    scaled = [v / temperature for v in z]
    top = max(scaled)
    lse = top + math.log(sum(math.exp(v - top) for v in scaled))
    return [v - lse for v in scaled]


def reference_wsl(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, tau: float, variant: str) -> float:
    """The WSL formula per sample with Python floats (spec §4.2), independent of the library code."""
    total = 0.0
    for b in range(s.shape[0]):
        zs, zt, label = [float(v) for v in s[b]], [float(v) for v in t[b]], int(y[b])
        weight_tau = 1.0 if variant == "official" else tau
        ce_s = -_log_softmax(zs, weight_tau)[label]
        ce_t = -_log_softmax(zt, weight_tau)[label]
        ratio = ce_s / (ce_t + 1e-7) if variant == "official" else ce_s / ce_t
        weight = 1.0 - math.exp(-max(ratio, 0.0))
        log_ps, log_pt = _log_softmax(zs, tau), _log_softmax(zt, tau)
        soft_ce = -sum(math.exp(log_pt[c]) * log_ps[c] for c in range(len(zs)))
        total += weight * soft_ce
    return tau * tau * total / s.shape[0]


def _batch(seed: int, batch: int = 6, classes: int = 9) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(batch, classes, generator=g) * 3
    t = torch.randn(batch, classes, generator=g) * 3
    y = torch.randint(0, classes, (batch,), generator=g)
    return s, t, y


@pytest.mark.parametrize("variant", ["official", "effdstl"])
@pytest.mark.parametrize("tau", [1.0, 2.0, 4.0])
def test_wsl_matches_float64_loops(variant: str, tau: float) -> None:
    for seed in range(3):
        s, t, y = _batch(seed)
        expected = reference_wsl(s, t, y, tau, variant)
        assert LF.wsl(s, t, y, tau, variant).item() == pytest.approx(expected, rel=1e-5)
        assert LF.wsl(s.double(), t.double(), y, tau, variant).item() == pytest.approx(expected, rel=1e-12)


def test_variants_differ_only_in_the_weight() -> None:
    s, t, y = _batch(7)
    official, effdstl = LF.wsl(s, t, y, 2.0, "official"), LF.wsl(s, t, y, 2.0, "effdstl")
    assert not torch.isclose(official, effdstl)
    # At τ = 1 the two weights agree up to the official ε.
    at_one = LF.wsl(s, t, y, 1.0, "effdstl").item()
    assert LF.wsl(s, t, y, 1.0, "official").item() == pytest.approx(at_one, rel=1e-5)


def test_wsl_hand_derived_value() -> None:
    # K=2, τ=1, label 0: p_s = (3/4, 1/4), p_t = (1/2, 1/2).
    # CE_s = log(4/3), CE_t = log 2, w = 1 − exp(−CE_s/CE_t); soft CE = ½(log(4/3) + log 4).
    s = torch.tensor([[math.log(3.0), 0.0]])
    t = torch.zeros(1, 2)
    y = torch.tensor([0])
    w = 1 - math.exp(-math.log(4 / 3) / math.log(2))
    expected = w * 0.5 * (math.log(4 / 3) + math.log(4))
    assert LF.wsl(s, t, y, 1.0, "effdstl").item() == pytest.approx(expected, rel=1e-6)
    assert LF.wsl(s, t, y, 1.0, "official").item() == pytest.approx(expected, rel=1e-6)


def test_weight_is_detached_analytic_gradient() -> None:
    """dL/ds_j = τ/B · w_b · (σ_τ(s)_j − σ_τ(t)_j): no gradient flows through the weight."""
    s, t, y = _batch(3, batch=5, classes=6)
    tau = 2.0
    for variant in ("official", "effdstl"):
        x = s.double().requires_grad_()
        LF.wsl(x, t.double(), y, tau, variant).backward()
        expected = torch.zeros_like(x)
        for b in range(5):
            zs, zt = [float(v) for v in s[b]], [float(v) for v in t[b]]
            w_tau = 1.0 if variant == "official" else tau
            ce_s, ce_t = -_log_softmax(zs, w_tau)[int(y[b])], -_log_softmax(zt, w_tau)[int(y[b])]
            ratio = ce_s / (ce_t + 1e-7) if variant == "official" else ce_s / ce_t
            w = 1 - math.exp(-max(ratio, 0.0))
            ps, pt = _log_softmax(zs, tau), _log_softmax(zt, tau)
            for j in range(6):
                expected[b, j] = tau / 5 * w * (math.exp(ps[j]) - math.exp(pt[j]))
        assert torch.allclose(x.grad, expected, atol=1e-12), variant


def test_gradcheck_where_the_weight_is_saturated() -> None:
    # A teacher certain of the label makes the weight's CE_t = 0, so w = 1 exactly under any small
    # perturbation of s: finite differences then see only the soft-CE path, which gradcheck verifies end to
    # end. official: CE_t at T=1 is 0 while τ=200 still softens the targets; effdstl: one-hot targets.
    g = torch.Generator().manual_seed(5)
    s = torch.randn(3, 5, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.tensor([0, 3, 1])
    t = torch.full((3, 5), -400.0, dtype=torch.float64)
    t[torch.arange(3), y] = 400.0
    t[0, 2] = -100.0
    assert torch.autograd.gradcheck(lambda x: LF.wsl(x, t, y, 200.0, "official"), (s,))
    assert torch.autograd.gradcheck(lambda x: LF.wsl(x, t, y, 2.0, "effdstl"), (s,))


def test_edge_cases_batch_of_one_and_certain_teacher() -> None:
    s, t, y = _batch(4, batch=1)
    value = LF.wsl(s, t, y, 2.0, "effdstl")
    assert value.item() == pytest.approx(reference_wsl(s, t, y, 2.0, "effdstl"), rel=1e-5)
    # CE_t == 0 in float32 (teacher certain): effdstl's ratio is +inf → w = 1; with CE_s = 0 too, w = 0.
    t = torch.tensor([[100.0, -100.0], [100.0, -100.0]])
    s = torch.tensor([[0.0, 0.0], [100.0, -100.0]])
    y = torch.tensor([0, 0])
    value = LF.wsl(s, t, y, 1.0, "effdstl")
    assert torch.isfinite(value)
    expected = 1.0 * math.log(2) / 2  # sample 0: w = 1, soft CE = log 2; sample 1: w = 0
    assert value.item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="empty batch"):
        LF.wsl(torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))


def test_bad_arguments_fail_clearly() -> None:
    s, t, y = _batch(1)
    with pytest.raises(ValueError, match="valid choices: official, effdstl"):
        LF.wsl(s, t, y, 2.0, "paper")
    with pytest.raises(ValueError, match="temperature must be positive"):
        LF.wsl(s, t, y, 0.0)
    with pytest.raises(ValueError, match="one shape"):
        LF.wsl(s, t[:, :3], y)
    with pytest.raises(ValueError, match="class indices"):
        LF.wsl(s, t, y.float())
    with pytest.raises(ConfigError, match="valid choices: official, effdstl"):
        build_terms({"wsl": {"variant": "v2"}})
    with pytest.raises(ConfigError, match="positive number"):
        build_terms({"wsl": {"temperature": -1}})


def _inputs(s: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> TermInputs:
    view = View("main", torch.zeros(len(s), 1, 2, 2), labels)
    return TermInputs(view, s, t, {}, {}, 0, 0, 0, 1, 1)


def test_term_reads_raw_teacher_and_labels() -> None:
    (term,) = build_terms({"wsl": {"weight": 2.5, "temperature": 2.0, "variant": "effdstl"}})
    s, t, y = _batch(2)
    assert term.weight == 2.5 and term.needs_teacher and term.needs_labels
    # A target transform must not change WSL (it reads the raw teacher, spec §4.2).
    inputs = _inputs(s, t, y)
    inputs._soft_targets = lambda tau: torch.full_like(s, 1.0 / s.shape[1])
    assert term(inputs).item() == pytest.approx(reference_wsl(s, t, y, 2.0, "effdstl"), rel=1e-5)
    with pytest.raises(DatakdError, match="needs hard labels"):
        term(_inputs(s, t, None))
