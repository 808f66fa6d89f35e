"""TST Stage II: the loss against an independent float64 computation, its gradient, edge cases, the ALRS
rule, and a toy where the search must move θ towards what the teacher handles and the student does not."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from datakd.augmenters.tst.encoders import make_encoders
from datakd.augmenters.tst.policy import TSTPolicy
from datakd.augmenters.tst.search import ALRS, frozen_student, parameter_list, search_step
from datakd.data.loaders import Normalizer
from datakd.losses.functional import tst_search_loss
from datakd.models import create

INVERT = 12


def reference_loss(zs, zt, labels, alpha, beta) -> float:
    """Eq. 2 by explicit loops in float64 (math module, not torch's softmax)."""
    total = 0.0
    for k in range(len(labels)):
        y = int(labels[k])
        t = [float(v) for v in zt[k]]
        s = [float(v) for v in zs[k]]
        log_norm_t = math.log(sum(math.exp(v) for v in t))
        p_s = math.exp(s[y]) / sum(math.exp(v) for v in s)
        total += alpha * (log_norm_t - t[y]) + beta * -math.log(1.0 - p_s + 1e-8)
    return total / len(labels)


@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 1.0), (0.75, 1.25), (0.0, 2.0)])
def test_search_loss_matches_eq2(alpha: float, beta: float) -> None:
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(6, 5, generator=g) * 3, torch.randn(6, 5, generator=g) * 3
    labels = torch.randint(0, 5, (6,), generator=g)
    value = tst_search_loss(zs, zt, labels, alpha, beta)
    assert value.item() == pytest.approx(reference_loss(zs, zt, labels, alpha, beta), rel=1e-5)
    per_sample = tst_search_loss(zs, zt, labels, alpha, beta, reduction="none")
    assert per_sample.shape == (6,) and per_sample.mean().item() == pytest.approx(value.item(), rel=1e-6)


def test_search_loss_gradient_check() -> None:
    g = torch.Generator().manual_seed(1)
    zs = torch.randn(4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    zt = torch.randn(4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    labels = torch.tensor([0, 2, 1, 2])
    assert torch.autograd.gradcheck(lambda s, t: tst_search_loss(s, t, labels, 0.7, 1.3), (zs, zt))


def test_search_loss_edge_cases_stay_finite() -> None:
    labels = torch.tensor([1])
    one = tst_search_loss(torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, 0.0]]), labels)
    assert torch.isfinite(one)  # a batch of one is well defined
    certain = tst_search_loss(torch.tensor([[-200.0, 200.0]]), torch.tensor([[0.0, 200.0]]), labels)
    assert certain.item() == pytest.approx(-math.log(1e-8), rel=1e-4)  # p_S = 1: −log(eps), not inf
    hopeless = tst_search_loss(torch.tensor([[200.0, -200.0]]), torch.tensor([[0.0, 200.0]]), labels)
    assert abs(hopeless.item()) < 1e-6  # p_S = 0 and a certain teacher: the minimum, ≈ 0


def test_alrs_decays_only_on_plateaus() -> None:
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.01)
    alrs = ALRS(optimizer)
    lrs = []
    for loss in (2.0, 1.99, 1.5, 1.6, 1.61, 1.0):
        alrs.step(loss)
        lrs.append(optimizer.param_groups[0]["lr"])
    # 999→2.0 big drop: keep; 2.0→1.99 (δ=0.01, 0.5 %): decay; 1.99→1.5: keep; 1.5→1.6 rises 6.7 %: keep;
    # 1.6→1.61 rises 0.6 %: decay; 1.61→1.0: keep.
    expected = [0.01, 0.009, 0.009, 0.009, 0.0081, 0.0081]
    assert lrs == pytest.approx(expected)
    state = alrs.state_dict()
    fresh = ALRS(optimizer)
    fresh.load_state_dict(state)
    assert fresh.last_loss == 1.0


class SignClassifier(nn.Module):
    """Two classes from the mean of a normalised image: class 0 when k·f(mean) > 0.

    With `invariant`, f = |·|, so Invert (x → −x for mean = std = 0.5) does not change the decision."""

    def __init__(self, invariant: bool) -> None:
        super().__init__()
        self.invariant = invariant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3))
        score = 4.0 * (mean.abs() if self.invariant else mean)
        return torch.stack([score, torch.zeros_like(score)], dim=1)


def invert_policy(mode: str) -> TSTPolicy:
    torch.manual_seed(0)
    normalizer = Normalizer((0.5,) * 3, (0.5,) * 3, torch.device("cpu"))
    return TSTPolicy(make_encoders(3), normalizer, num_ops=1, rbd_mode=mode, ops=["Invert"])


def ce_gap(
    policy: TSTPolicy, student: nn.Module, teacher: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> float:
    """E[CE_student − CE_teacher] on f_DE(x), Monte-Carlo with fixed random numbers."""
    torch.manual_seed(123)
    gaps = []
    with torch.no_grad():
        for _ in range(300):
            x_hat = policy(x)
            ce = nn.functional.cross_entropy
            gaps.append((ce(student(x_hat), y) - ce(teacher(x_hat), y)).item())
    return sum(gaps) / len(gaps)


@pytest.mark.parametrize("mode", ["code", "standard"])
def test_search_moves_theta_towards_what_only_the_teacher_handles(mode: str) -> None:
    x = Normalizer((0.5,) * 3, (0.5,) * 3, torch.device("cpu"))(
        torch.full((8, 3, 8, 8), 200, dtype=torch.uint8)
    )
    y = torch.zeros(8, dtype=torch.long)
    for teacher_invariant, direction in ((True, +1), (False, -1)):
        teacher, student = SignClassifier(teacher_invariant), SignClassifier(not teacher_invariant)
        policy = invert_policy(mode)
        before = ce_gap(policy, student, teacher, x, y)
        optimizer = torch.optim.SGD(parameter_list(policy, False), lr=0.5, momentum=0.9)
        torch.manual_seed(5)
        losses = [search_step(policy, student, teacher, x, y, optimizer).item() for _ in range(60)]
        theta = policy.prob_logits[INVERT].item()
        after = ce_gap(policy, student, teacher, x, y)
        # Inverting fools only the student → apply it more (θ_p ↑); fooling the teacher → less (θ_p ↓).
        # Either way the student's CE grows relative to the teacher's.
        assert direction * theta > 0.5, (mode, teacher_invariant, theta)
        assert after > before + 0.05, (mode, teacher_invariant, before, after)
        assert all(policy.prob_logits[i].item() == 0 for i in range(14) if i != INVERT)
        if mode == "standard":  # (code mode keeps the apply probability in (0.5, 0.73): too noisy to see)
            assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10  # the search objective goes down


def test_search_step_freezes_the_networks_and_trains_only_theta() -> None:
    torch.manual_seed(0)
    normalizer = Normalizer((0.5,) * 3, (0.25,) * 3, torch.device("cpu"))
    policy = TSTPolicy(make_encoders(3), normalizer)
    policy.encoders.requires_grad_(False)
    student, teacher = create("resnet8", 10), create("resnet8", 10).eval().requires_grad_(False)
    student.train()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    encoders_before = {k: v.clone() for k, v in policy.encoders.state_dict().items()}
    x, y = torch.randn(6, 3, 16, 16), torch.randint(0, 10, (6,))
    optimizer = torch.optim.SGD(parameter_list(policy, False), lr=0.01, momentum=0.9)
    with frozen_student(student) as frozen:
        assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
        for _ in range(3):
            search_step(policy, frozen, teacher, x, y, optimizer)
    assert student.training and all(p.requires_grad for p in student.parameters())
    for key, value in student.state_dict().items():  # weights and BN running stats untouched (eval mode)
        assert torch.equal(value, before[key]), key
    for key, value in policy.encoders.state_dict().items():
        assert torch.equal(value, encoders_before[key]), key
    assert policy.prob_logits.abs().sum() > 0 or policy.mag_logits.abs().sum() > 0
    assert len(parameter_list(policy, True)) == 2 + len(list(policy.encoders.parameters()))


def test_a_pass_of_pass_images_keeps_the_authors_proportion_and_chains_loader_epochs() -> None:
    """Authors (R110 → R20): one pass = one full-split epoch (782 steps). A 2,000-image subset at batch 128
    has 16-step epochs; `pass_images: 60000` gives the full Fashion-MNIST split's 469 steps per pass."""
    from datakd.errors import ConfigError
    from datakd.events.tst_search import SEARCH_KEY, TSTSearch

    assert TSTSearch().pass_steps(16, 128) == 16  # unset: one epoch of the run's own loader
    assert TSTSearch(pass_images=60000).pass_steps(16, 128) == 469
    assert TSTSearch(pass_images=50000).pass_steps(391, 64) == 782  # the authors' pass
    with pytest.raises(ConfigError, match="pass_images"):
        TSTSearch(pass_images=0)

    class Loader:
        def __len__(self) -> int:
            return 3

        def epoch(self, key: int, start: int = 0):
            return iter([(key, i) for i in range(start, 3)])

    class Trainer:
        loader = Loader()

    batches = TSTSearch._batches(Trainer(), 5, 1, 2)  # resume pass 1 of the call at epoch 5 at step 2
    got = [next(batches) for _ in range(5)]
    first = SEARCH_KEY + 5 * 1000 + 1  # the key a one-epoch pass always used
    assert got == [
        (first, 2),
        (first + 10**7, 0),
        (first + 10**7, 1),
        (first + 10**7, 2),
        (first + 2 * 10**7, 0),
    ]
