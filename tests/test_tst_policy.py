"""f_DE: composition geometry (gates off → identity, one gate on → that op), the batch-shared image-sized
Cutout, and the randomness of op choice, gates (per rbd_mode) and magnitudes."""

from __future__ import annotations

import math

import pytest
import torch

from datakd.augmenters.tst.encoders import make_encoders
from datakd.augmenters.tst.ops import OPS, apply_pixel_op
from datakd.augmenters.tst.policy import Draw, TSTPolicy
from datakd.data.loaders import Normalizer
from datakd.errors import ConfigError

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def make_policy(**kwargs) -> TSTPolicy:
    torch.manual_seed(0)
    normalizer = Normalizer(MEAN, STD, torch.device("cpu"))
    return TSTPolicy(make_encoders(3), normalizer, **kwargs)


def images(n: int = 6, size: int = 32) -> torch.Tensor:
    normalizer = Normalizer(MEAN, STD, torch.device("cpu"))
    pixels = torch.randint(
        1, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(3)
    )
    return normalizer(pixels)


def test_all_gates_off_returns_the_input_exactly() -> None:
    policy = make_policy(num_ops=14)
    x = images()
    draw = Draw(list(range(14)), torch.zeros(14), torch.full((11,), 0.7))
    assert torch.equal(policy.apply(x, draw), x)


@pytest.mark.parametrize("op", [o for o in OPS if o != "Cutout"])
def test_one_gate_on_gives_that_ops_output(op: str) -> None:
    policy = make_policy()
    x = images()
    index = OPS.index(op)
    magnitudes = torch.full((11,), 0.6)
    torch.manual_seed(7)
    out = policy.apply(x, Draw([index], torch.ones(1), magnitudes), random=False)
    torch.manual_seed(7)  # same encoder noise
    if index < 11:
        expected = policy.encoders[op](x, 0.6, random=False)
    else:  # Equalize / Invert: denormalise → uint8 op → renormalise
        expected = policy.normalizer(apply_pixel_op(policy.normalizer.inverse(x), op))
    torch.testing.assert_close(out, expected, atol=2e-6, rtol=0)


def test_gates_mix_linearly_and_sum_residuals() -> None:
    policy = make_policy(num_ops=2)
    x = images()
    invert = policy.normalizer(apply_pixel_op(policy.normalizer.inverse(x), "Invert"))
    equalize = policy.normalizer(apply_pixel_op(policy.normalizer.inverse(x), "Equalize"))
    out = policy.apply(x, Draw([12, 11], torch.tensor([0.3, 0.5]), torch.zeros(11)))
    torch.testing.assert_close(out, x + 0.3 * (invert - x) + 0.5 * (equalize - x), atol=1e-5, rtol=0)


def test_cutout_is_one_image_sized_box_shared_by_the_batch() -> None:
    policy = make_policy()
    x = images(n=5)
    sides = []
    for _ in range(250):
        out = policy.apply(x, Draw([13], torch.ones(1), torch.zeros(11)))
        zero = out == 0
        assert torch.equal(zero, zero[:1, :1].expand_as(zero))  # same box for every image and channel
        rows = zero[0, 0].any(dim=1).nonzero().flatten()
        cols = zero[0, 0].any(dim=0).nonzero().flatten()
        box = zero[0, 0, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.all()  # a solid rectangle
        assert torch.equal(out[~zero], x[~zero])  # untouched outside
        height, width = len(rows), len(cols)
        assert 16 <= height <= 32 and 16 <= width <= 32  # side = image size, clipped at the border
        sides += [height, width]
    mean = sum(sides) / len(sides)
    assert abs(mean - 24.0) < 0.8  # E[side] = 24 px for a uniform centre on a 32-px image
    assert min(sides) <= 17 and max(sides) == 32


def test_chosen_ops_are_distinct_and_uniform() -> None:
    policy = make_policy(num_ops=4)
    counts = torch.zeros(14)
    draws = 7000
    for _ in range(draws):
        ops = policy.sample().ops
        assert len(ops) == 4 and len(set(ops)) == 4
        counts[ops] += 1
    freq = counts / draws
    assert torch.all((freq - 4 / 14).abs() < 0.02), freq
    restricted = make_policy(num_ops=2, ops=["Invert", "ShearX", "Cutout"])
    seen = {op for _ in range(200) for op in restricted.sample().ops}
    assert seen == {OPS.index("Invert"), OPS.index("ShearX"), OPS.index("Cutout")}


EXPECTED_APPLY = {
    "code": lambda t: sigmoid(sigmoid(t)),  # the probability itself fed as the logit
    "paper": lambda t: sigmoid(t) / (1 + sigmoid(t)),  # logit = log σ(θ): σ(log p) = p / (1 + p)
    "standard": sigmoid,
}


@pytest.mark.parametrize("mode", ["code", "paper", "standard"])
def test_gate_statistics_match_each_rbd_mode(mode: str) -> None:
    policy = make_policy(num_ops=14, rbd_mode=mode)
    thetas = torch.linspace(-3, 3, 14)
    with torch.no_grad():
        policy.prob_logits.copy_(thetas)
    expected = torch.tensor([EXPECTED_APPLY[mode](float(t)) for t in thetas])
    torch.testing.assert_close(policy.apply_probabilities().detach(), expected, atol=1e-6, rtol=0)
    torch.manual_seed(11)
    on = torch.zeros(14)
    n = 6000
    for _ in range(n):
        draw = policy.sample()
        on[draw.ops] += (draw.gates.detach() > 0.5).float()
    assert torch.all((on / n - expected).abs() < 0.025), (on / n, expected)
    if mode == "code":
        assert torch.all((on / n > 0.45) & (on / n < 0.76))  # (0.5, 0.731) whatever θ is


def test_magnitudes_per_mode() -> None:
    thetas = torch.linspace(-2, 2, 11)
    for mode in ("code", "standard"):
        policy = make_policy(rbd_mode=mode)
        with torch.no_grad():
            policy.mag_logits.copy_(thetas)
        torch.testing.assert_close(policy.sample().magnitudes.detach(), torch.sigmoid(thetas))
    policy = make_policy(rbd_mode="paper")
    with torch.no_grad():
        policy.mag_logits.copy_(thetas)
    torch.manual_seed(2)
    samples = torch.stack([policy.sample().magnitudes.detach() for _ in range(6000)])
    expected = torch.sigmoid(thetas) / (1 + torch.sigmoid(thetas))
    assert torch.all(((samples > 0.5).float().mean(0) - expected).abs() < 0.025)


@pytest.mark.parametrize("mode", ["code", "paper", "standard"])
def test_theta_receives_gradient_through_gates_and_encoders(mode: str) -> None:
    policy = make_policy(num_ops=14, rbd_mode=mode)
    with torch.no_grad():  # fresh STNs ignore m (zero weights); give them a magnitude dependence
        for op in OPS[6:11]:
            policy.encoders[op].fc.weight.normal_(0, 0.1)
    x = images(n=4)
    for _ in range(40):  # near-binary gates pass gradient only when soft: accumulate over draws
        policy(x).square().mean().backward()
    assert policy.prob_logits.grad is not None and torch.all(policy.prob_logits.grad != 0)
    assert policy.mag_logits.grad is not None and torch.all(policy.mag_logits.grad != 0)


def test_bad_options_fail_with_the_valid_choices() -> None:
    with pytest.raises(ConfigError, match="code, paper, standard"):
        make_policy(rbd_mode="papr")
    with pytest.raises(ConfigError, match="between 1 and 14"):
        make_policy(num_ops=15)
    with pytest.raises(ConfigError, match="Rotate"):
        make_policy(ops=["Rotat"])
