"""DKD and DIST against independent float64 computations of their papers' formulas, gradient checks, edge
cases, DKD's warm-up, and short real-data distillation runs showing a student learns with each."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from datakd.api.context import TermInputs, View
from datakd.config import config_from_dict
from datakd.engine.build import build_trainer
from datakd.engine.metrics import read_metrics
from datakd.errors import ConfigError, DatakdError
from datakd.losses import functional as LF
from datakd.losses.base import build_terms
from datakd.losses.dist import DIST
from datakd.losses.dkd import DecoupledKD
from tests.helpers import tiny_config


# ----------------------------------------------------------------------------- float64 references (loops)
def _softmax(row: list[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def reference_dkd(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, alpha: float, beta: float, tau: float):
    """Zhao et al., section 3: TCKD = KL(b^T ‖ b^S) over [p_t, 1 − p_t]; NCKD = KL(p̂^T ‖ p̂^S) over the
    non-target classes renormalised; loss = τ²·(α·TCKD + β·NCKD) averaged over the batch."""
    total = 0.0
    for i in range(s.shape[0]):
        ps = _softmax([float(v) / tau for v in s[i]])
        pt = _softmax([float(v) / tau for v in t[i]])
        gt = int(y[i])
        rest_s = sum(p for j, p in enumerate(ps) if j != gt)
        rest_t = sum(p for j, p in enumerate(pt) if j != gt)
        tckd = _kl([pt[gt], rest_t], [ps[gt], rest_s])
        nckd = _kl(
            [p / rest_t for j, p in enumerate(pt) if j != gt],
            [p / rest_s for j, p in enumerate(ps) if j != gt],
        )
        total += alpha * tckd + beta * nckd
    return tau * tau * total / s.shape[0]


def _pearson(xs: list[float], ys: list[float], eps: float) -> float:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    cov = sum((x - mx) * (v - my) for x, v in zip(xs, ys))
    nx = math.sqrt(sum((x - mx) ** 2 for x in xs))
    ny = math.sqrt(sum((v - my) ** 2 for v in ys))
    return cov / (nx * ny + eps)


def reference_dist(s: torch.Tensor, t: torch.Tensor, beta: float, gamma: float, tau: float, eps=1e-8):
    """Huang et al., section 3: 1 − mean Pearson per sample (over classes) and per class (over the batch)
    of the σ_τ predictions, weighted by β and γ and scaled by τ² (authors' code: eps in the denominator)."""
    ps = [_softmax([float(v) / tau for v in row]) for row in s]
    pt = [_softmax([float(v) / tau for v in row]) for row in t]
    n, k = len(ps), len(ps[0])
    inter = 1 - sum(_pearson(ps[i], pt[i], eps) for i in range(n)) / n
    intra = 1 - sum(_pearson([r[c] for r in ps], [r[c] for r in pt], eps) for c in range(k)) / k
    return tau * tau * (beta * inter + gamma * intra)


def logits(*shape: int, seed: int, scale: float = 3.0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def labels(n: int, k: int, seed: int) -> torch.Tensor:
    return torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- DKD: formula
@pytest.mark.parametrize(("tau", "alpha", "beta"), [(4.0, 1.0, 8.0), (1.0, 0.5, 2.0), (2.0, 1.0, 6.0)])
def test_dkd_matches_float64_reference(tau: float, alpha: float, beta: float) -> None:
    s, t, y = logits(6, 9, seed=1), logits(6, 9, seed=2), labels(6, 9, seed=3)
    ref = reference_dkd(s, t, y, alpha, beta, tau)
    assert LF.dkd(s, t, y, alpha, beta, tau).item() == pytest.approx(ref, rel=1e-5, abs=1e-6)
    assert LF.dkd(s.double(), t.double(), y, alpha, beta, tau).item() == pytest.approx(ref, rel=1e-10)


def test_dkd_matches_the_masking_formulation() -> None:
    # The authors' code builds the non-target distribution by subtracting 1000 from the target logit before
    # the softmax; for moderate logits (float64) that is the same distribution as dropping the class.
    s, t, y = (
        logits(5, 7, seed=4, dtype=torch.float64),
        logits(5, 7, seed=5, dtype=torch.float64),
        labels(5, 7, 6),
    )
    tau = 4.0
    gt = torch.nn.functional.one_hot(y, 7).bool()
    ps, pt = torch.softmax(s / tau, 1), torch.softmax(t / tau, 1)
    bs = torch.stack([ps[gt], ps.masked_fill(gt, 0).sum(1)], 1)
    bt = torch.stack([pt[gt], pt.masked_fill(gt, 0).sum(1)], 1)
    tckd = (bt * (bt.log() - bs.log())).sum(1).mean() * tau**2
    log_ns = torch.log_softmax(s / tau - 1000.0 * gt, 1)
    nt = torch.softmax(t / tau - 1000.0 * gt, 1)
    nckd = (torch.xlogy(nt, nt) - nt * log_ns).sum(1).mean() * tau**2
    got_t, got_n = LF.dkd_parts(s, t, y, tau)
    assert got_t.item() == pytest.approx(tckd.item(), rel=1e-9)
    assert got_n.item() == pytest.approx(nckd.item(), rel=1e-9)


def test_kd_decomposes_into_tckd_plus_weighted_nckd() -> None:
    # The reformulation DKD is built on: KD = TCKD + (1 − p^T_t)·NCKD, per sample.
    s, t, y = (
        logits(8, 12, seed=7, dtype=torch.float64),
        logits(8, 12, seed=8, dtype=torch.float64),
        labels(8, 12, 9),
    )
    tau = 3.0
    tckd, nckd = LF.dkd_parts(s, t, y, tau, reduction="none")
    rest_t = 1 - torch.softmax(t / tau, 1).gather(1, y[:, None]).squeeze(1)
    kd = LF.kd(s, t, tau, reduction="none")
    assert torch.allclose(kd, tckd + rest_t * nckd, rtol=1e-10, atol=1e-12)


def test_dkd_hand_derived_values() -> None:
    # τ = 1, 3 classes, target 0, uniform student: b^S = (1/3, 2/3), p̂^S = (1/2, 1/2).
    s = torch.zeros(1, 3, dtype=torch.float64)
    y = torch.tensor([0])
    # Teacher (2, 1, 1)/4: b^T = (1/2, 1/2), p̂^T uniform -> NCKD = 0, TCKD = ½ ln(9/8).
    t = torch.log(torch.tensor([[2.0, 1.0, 1.0]], dtype=torch.float64))
    tckd, nckd = LF.dkd_parts(s, t, y, 1.0)
    assert tckd.item() == pytest.approx(0.5 * math.log(9 / 8), rel=1e-12)
    assert nckd.item() == pytest.approx(0.0, abs=1e-15)
    # Teacher (1, 3, 1)/5: b^T = (1/5, 4/5), p̂^T = (3/4, 1/4).
    t = torch.log(torch.tensor([[1.0, 3.0, 1.0]], dtype=torch.float64))
    expected_t = 0.2 * math.log(0.2 * 3) + 0.8 * math.log(0.8 * 1.5)
    expected_n = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert LF.dkd(s, t, y, 1.0, 8.0, 1.0).item() == pytest.approx(expected_t + 8 * expected_n, rel=1e-12)
    # τ² scaling: logits ×2 at τ = 2 give the same distributions, 4× the loss.
    assert LF.dkd(2 * s, 2 * t, y, 1.0, 8.0, 2.0).item() == pytest.approx(4 * (expected_t + 8 * expected_n))


def test_dkd_reductions() -> None:
    s, t, y = logits(5, 6, seed=10), logits(5, 6, seed=11), labels(5, 6, 12)
    per = LF.dkd(s, t, y, reduction="none")
    assert per.shape == (5,)
    assert per.mean().item() == pytest.approx(LF.dkd(s, t, y).item(), rel=1e-6)
    assert LF.dkd(s, t, y, reduction="sum").item() == pytest.approx(per.sum().item(), rel=1e-6)


# ----------------------------------------------------------------------------- DKD: gradients and edges
def test_dkd_gradcheck_float64() -> None:
    s = logits(4, 6, seed=13, dtype=torch.float64).requires_grad_()
    t, y = logits(4, 6, seed=14, dtype=torch.float64), labels(4, 6, 15)
    assert torch.autograd.gradcheck(lambda x: LF.dkd(x, t, y, 1.0, 8.0, 4.0), (s,))
    assert torch.autograd.gradcheck(lambda x: LF.dkd(x, t, y, 0.7, 2.0, 1.0, reduction="none"), (s,))


def test_dkd_edge_cases() -> None:
    # Batch of 1 and 2 are fine: DKD is a per-sample loss.
    for n in (1, 2):
        s, t, y = logits(n, 5, seed=16), logits(n, 5, seed=17), labels(n, 5, 18)
        assert LF.dkd(s, t, y).item() == pytest.approx(reference_dkd(s, t, y, 1.0, 8.0, 4.0), rel=1e-5)
    # Two classes: no non-target distribution to match, NCKD = 0 and DKD(α=1) is plain KD.
    s, t, y = logits(6, 2, seed=19), logits(6, 2, seed=20), labels(6, 2, 21)
    _, nckd = LF.dkd_parts(s, t, y, 4.0)
    assert nckd.abs().item() < 1e-6
    assert LF.dkd(s, t, y, 1.0, 8.0, 4.0).item() == pytest.approx(LF.kd(s, t, 4.0).item(), rel=1e-5)
    # Identical student and teacher: zero loss.
    s = logits(4, 10, seed=22)
    assert abs(LF.dkd(s, s.clone(), labels(4, 10, 23)).item()) < 1e-5
    # Bad inputs fail with one line.
    with pytest.raises(DatakdError, match="at least 2 classes"):
        LF.dkd(torch.zeros(3, 1), torch.zeros(3, 1), torch.zeros(3, dtype=torch.long))
    with pytest.raises(DatakdError, match="hard label"):
        LF.dkd(s, s, torch.zeros(4))
    with pytest.raises(DatakdError, match="one shape"):
        LF.dkd(s, s[:, :5], labels(4, 5, 1))


def test_dkd_extreme_logits_stay_finite_and_exact() -> None:
    # The teacher is certain of the target and the student is certain of another class. In float32,
    # 1 − p_target and log p_target underflow to 0/−inf in a probability-space implementation; the
    # log-space target-vs-rest logits keep TCKD finite and equal to τ²·(logsumexp(s/τ) − s_y/τ).
    s = torch.tensor([[-3000.0, 3000.0, 0.0], [50.0, 0.0, -50.0]], requires_grad=True)
    t = torch.tensor([[3000.0, 0.0, -3000.0], [80.0, -80.0, 0.0]])
    y = torch.tensor([0, 0])
    tckd, nckd = LF.dkd_parts(s, t, y, 4.0, reduction="none")
    assert torch.isfinite(tckd).all() and torch.isfinite(nckd).all()
    expected = 16.0 * (torch.logsumexp(s[0].double() / 4, 0) - s[0, 0].double() / 4)
    assert tckd[0].item() == pytest.approx(expected.item(), rel=1e-5)
    (tckd.sum() + 8 * nckd.sum()).backward()
    assert torch.isfinite(s.grad).all()


# ----------------------------------------------------------------------------- DIST: formula
@pytest.mark.parametrize(("tau", "beta", "gamma"), [(1.0, 1.0, 1.0), (4.0, 2.0, 2.0), (2.0, 1.0, 0.5)])
def test_dist_matches_float64_reference(tau: float, beta: float, gamma: float) -> None:
    s, t = logits(7, 9, seed=30), logits(7, 9, seed=31)
    ref = reference_dist(s, t, beta, gamma, tau)
    assert LF.dist(s, t, beta, gamma, tau).item() == pytest.approx(ref, rel=1e-5, abs=1e-6)
    assert LF.dist(s.double(), t.double(), beta, gamma, tau).item() == pytest.approx(ref, rel=1e-10)


def test_dist_relations_match_corrcoef() -> None:
    # A different formulation: torch.corrcoef's Pearson matrix (eps only shifts it by ~1e-8 relative).
    p_s = torch.softmax(logits(6, 8, seed=32, dtype=torch.float64), 1)
    p_t = torch.softmax(logits(6, 8, seed=33, dtype=torch.float64), 1)
    inter = 1 - torch.stack([torch.corrcoef(torch.stack([a, b]))[0, 1] for a, b in zip(p_s, p_t)]).mean()
    intra = (
        1 - torch.stack([torch.corrcoef(torch.stack([a, b]))[0, 1] for a, b in zip(p_s.t(), p_t.t())]).mean()
    )
    assert LF.inter_class_relation(p_s, p_t).item() == pytest.approx(inter.item(), abs=1e-6)
    assert LF.intra_class_relation(p_s, p_t).item() == pytest.approx(intra.item(), abs=1e-6)


def test_dist_hand_derived_value() -> None:
    # Two samples, two classes, the teacher's predictions mirrored: every correlation is −1, so
    # inter = intra = 2 and the loss is τ²·(β·2 + γ·2).
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    t = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    assert LF.dist(s, t, 1.0, 1.0, 1.0).item() == pytest.approx(4.0, rel=1e-6)
    assert LF.dist(2 * s, 2 * t, 1.0, 0.5, 2.0).item() == pytest.approx(4.0 * 3.0, rel=1e-6)
    # Correlation ignores shift and scale: a teacher whose probabilities are an affine map of the
    # student's (per sample) has inter-class relation 0 although the distributions differ.
    p_s = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]], dtype=torch.float64)
    p_t = (p_s - 1 / 3) * 0.5 + 1 / 3
    assert LF.inter_class_relation(p_s, p_t, eps=1e-30).item() == pytest.approx(0.0, abs=1e-12)
    assert LF.kl_to_targets(torch.log(p_s), p_t, 1.0).item() > 0.01


# ----------------------------------------------------------------------------- DIST: gradients and edges
def test_dist_gradcheck_float64() -> None:
    s = logits(5, 6, seed=34, dtype=torch.float64).requires_grad_()
    t = logits(5, 6, seed=35, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: LF.dist(x, t, 1.0, 1.0, 1.0), (s,))
    assert torch.autograd.gradcheck(lambda x: LF.dist(x, t, 2.0, 0.5, 4.0), (s,))


def test_dist_edge_cases() -> None:
    # A batch of 1 has no intra-class correlation: a clear error, not NaN or a silent constant.
    s1, t1 = logits(1, 5, seed=36), logits(1, 5, seed=37)
    with pytest.raises(DatakdError, match="batch of 1"):
        LF.dist(s1, t1)
    # Without the intra-class term a single sample is fine.
    assert LF.dist(s1, t1, 1.0, 0.0).item() == pytest.approx(reference_dist(s1, t1, 1.0, 0.0, 1.0), rel=1e-5)
    # Batch of 2 and two classes are defined (correlations of two points are ±1 or 0).
    for shape in ((2, 5), (6, 2), (2, 2)):
        s, t = logits(*shape, seed=38), logits(*shape, seed=39)
        value = LF.dist(s, t)
        assert torch.isfinite(value) and value.item() == pytest.approx(
            reference_dist(s, t, 1, 1, 1), rel=1e-5
        )
    with pytest.raises(DatakdError, match="2 classes"):
        LF.dist(torch.zeros(4, 1), torch.zeros(4, 1))
    # Identical predictions: zero loss up to the eps in the denominator, which the authors' code has and
    # which is visible at high τ where σ_τ is flat (‖p − p̄‖² is small): exactly the reference's value.
    s = logits(8, 10, seed=40, scale=1.0)
    assert LF.dist(s, s.clone(), 1.0, 1.0, 4.0).item() == pytest.approx(
        reference_dist(s, s, 1, 1, 4), abs=1e-5
    )
    assert reference_dist(s, s, 1, 1, 4) < 1e-3
    s64 = s.double()
    assert abs(LF.dist(s64, s64.clone(), 1.0, 1.0, 4.0, eps=1e-30).item()) < 1e-12
    # Extreme logits: saturated softmaxes and constant class columns give finite values and gradients.
    s = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0], [0.0, 0.0, 1e4]], requires_grad=True)
    t = torch.tensor([[-1e4, 1e4, 0.0], [1e4, 0.0, -1e4], [0.0, 1e4, 0.0]])
    value = LF.dist(s, t, 1.0, 1.0, 4.0)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(s.grad).all()
    with pytest.raises(ValueError, match="positive"):
        LF.dist(s, t, temperature=0.0)


# ----------------------------------------------------------------------------- the loss-term modules
def term_inputs(
    s: torch.Tensor,
    t: torch.Tensor,
    y: torch.Tensor | None,
    epoch: int = 0,
    step: int = 0,
    steps: int = 10,
    targets: torch.Tensor | None = None,
    soft=None,
    log=None,
) -> TermInputs:
    view = View("main", torch.zeros(len(s), 1, 4, 4), y, targets=targets)
    return TermInputs(view, s, t, {}, {}, epoch, step, epoch * steps + step, steps, 240, soft, log)


def test_dkd_term_warmup_schedule() -> None:
    term = DecoupledKD()  # paper defaults: α=1, β=8, τ=4, 20 warm-up epochs, per-epoch ramp
    assert (term.alpha, term.beta, term.temperature, term.warmup_epochs) == (1.0, 8.0, 4.0, 20.0)
    # mdistiller: min(epoch / 20, 1) with 1-based epochs -> 0.05 in the first epoch, 1 from epoch 20.
    assert term.warmup_factor(0, 0.0) == pytest.approx(0.05)
    assert term.warmup_factor(0, 0.9) == pytest.approx(0.05)
    assert term.warmup_factor(9, 9.5) == pytest.approx(0.5)
    assert term.warmup_factor(19, 19.0) == 1.0 and term.warmup_factor(200, 200.0) == 1.0
    smooth = DecoupledKD(warmup_mode="step")
    assert smooth.warmup_factor(0, 0.0) == 0.0
    assert smooth.warmup_factor(5, 5.5) == pytest.approx(5.5 / 20)
    assert smooth.warmup_factor(25, 25.0) == 1.0
    assert DecoupledKD(warmup_epochs=0).warmup_factor(0, 0.0) == 1.0
    # The epoch-scaling rule stretches the warm-up with the schedule.
    scaled = DecoupledKD()
    cfg = config_from_dict({"schedule": {"scale": 2.0}, "loss": {"dkd": {}}})
    scaled.setup(SimpleNamespace(extra={"config": cfg}))
    assert scaled.warmup_factor(19, 19.0) == pytest.approx(0.5)


def test_dkd_term_value_logs_and_view_checks() -> None:
    s, t, y = logits(4, 10, seed=41), logits(4, 10, seed=42), labels(4, 10, 43)
    logged: dict[str, float] = {}
    term = DecoupledKD(beta=6.0)
    term.term_name = "dkd"
    value = term(term_inputs(s, t, y, epoch=4, log=lambda k, v, n=1: logged.__setitem__(k, float(v))))
    assert value.item() == pytest.approx(0.25 * LF.dkd(s, t, y, 1.0, 6.0, 4.0).item(), rel=1e-6)
    assert logged["dkd_warmup"] == pytest.approx(0.25)
    tckd, nckd = LF.dkd_parts(s, t, y, 4.0)
    assert logged["dkd_tckd"] == pytest.approx(tckd.item()) and logged["dkd_nckd"] == pytest.approx(
        nckd.item()
    )
    with pytest.raises(DatakdError, match="no labels"):
        term(term_inputs(s, t, None))
    with pytest.raises(DatakdError, match="label distributions"):
        term(term_inputs(s, t, y, targets=torch.full((4, 10), 0.1)))


def test_dkd_term_options_and_target_transform_conflict() -> None:
    (term,) = build_terms({"dkd": {"weight": 1.0, "beta": 2.0, "warmup_epochs": 5}})
    assert isinstance(term, DecoupledKD) and term.beta == 2.0 and term.warmup_epochs == 5
    with pytest.raises(ConfigError, match="valid choices"):
        build_terms({"dkd": {"gamma": 1.0}})
    for bad in ({"temperature": 0.0}, {"beta": -1.0}, {"warmup_epochs": -1}, {"warmup_mode": "cosine"}):
        with pytest.raises(DatakdError):
            DecoupledKD(**bad)
    cfg = config_from_dict({"loss": {"dkd": {}}, "target_transform": {"name": "identity"}})
    term = DecoupledKD()
    term.term_name = "dkd"
    with pytest.raises(ConfigError, match="target transform"):
        term.setup(SimpleNamespace(extra={"config": cfg}))


def test_dist_term_value_target_transform_and_logs() -> None:
    s, t = logits(6, 10, seed=44), logits(6, 10, seed=45)
    logged: dict[str, float] = {}
    term = DIST(beta=2.0, gamma=0.5, temperature=4.0)
    term.term_name = "dist"
    value = term(term_inputs(s, t, None, log=lambda k, v, n=1: logged.__setitem__(k, float(v))))
    assert value.item() == pytest.approx(LF.dist(s, t, 2.0, 0.5, 4.0).item(), rel=1e-6)
    p_s, p_t = torch.softmax(s / 4, 1), torch.softmax(t / 4, 1)
    assert logged["dist_inter"] == pytest.approx(LF.inter_class_relation(p_s, p_t).item(), rel=1e-6)
    assert logged["dist_intra"] == pytest.approx(LF.intra_class_relation(p_s, p_t).item(), rel=1e-6)
    # The teacher side comes from TermInputs.soft_targets, so a run's target transform applies.
    uniformish = torch.softmax(t / 8, 1)
    value = term(term_inputs(s, t, None, soft=lambda tau: uniformish))
    assert value.item() == pytest.approx(LF.dist_from_probs(p_s, uniformish, 2.0, 0.5, 4.0).item(), rel=1e-6)
    with pytest.raises(DatakdError, match="batch of 1"):
        term(term_inputs(s[:1], t[:1], None))
    for bad in ({"temperature": -1.0}, {"beta": 0.0, "gamma": 0.0}, {"gamma": -1.0}, {"eps": 0.0}):
        with pytest.raises(DatakdError):
            DIST(**bad)


# ----------------------------------------------------------------------------- real data: the student learns
@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A ResNet-8 teacher on 1,024 real images reaches ~55 % test top-1 in two epochs.
    out = tmp_path_factory.mktemp("teacher") / "run"
    cfg = tiny_config(out, data={"train_subset": 1024}, optim={"lr": 0.1})
    build_trainer(cfg, "train").fit()
    return out / "last.pt"


def distill(out: Path, teacher: Path, loss: dict) -> tuple[dict, list[dict]]:
    cfg = tiny_config(out, data={"train_subset": 1024}, teacher={"checkpoint": str(teacher)}, loss=loss)
    summary = build_trainer(cfg, "distill").fit()
    return summary, read_metrics(out / "metrics.csv")


@pytest.mark.slow
def test_dkd_student_learns_on_real_data(tmp_path: Path, teacher_ckpt: Path) -> None:
    # β = 2 as in the authors' ResNet-56 -> ResNet-20 config (small students); two-epoch warm-up.
    loss = {"ce": {}, "dkd": {"beta": 2.0, "warmup_epochs": 2}}
    _, rows = distill(tmp_path / "run", teacher_ckpt, loss)
    # DKD's mechanism rather than a top-1 threshold (a CE student clears those): warm-up, both parts fall.
    assert [r["dkd_warmup"] for r in rows] == pytest.approx([0.5, 1.0])
    assert rows[-1]["dkd_nckd"] < rows[0]["dkd_nckd"] and rows[-1]["dkd_tckd"] < rows[0]["dkd_tckd"]


@pytest.mark.slow
def test_dist_student_learns_on_real_data(tmp_path: Path, teacher_ckpt: Path) -> None:
    _, rows = distill(tmp_path / "run", teacher_ckpt, {"ce": {}, "dist": {}})
    # The relations tighten as the student learns (DIST's mechanism; no top-1 threshold).
    assert rows[-1]["dist_inter"] < rows[0]["dist_inter"] and rows[-1]["dist_intra"] < rows[0]["dist_intra"]
