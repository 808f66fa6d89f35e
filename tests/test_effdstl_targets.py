"""EffDstl's soft-target formulas and transforms: CKM against a float64 loop, every replacement and
manipulation against hand-derived values, exact subset masks, and the subset grammar's errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from datakd.errors import ConfigError, DatakdError
from datakd.targets import functional as TF
from datakd.targets.base import TargetInputs, build_target_transform
from datakd.targets.subsets import Subset

# ----------------------------------------------------------------------------------- knowledge mining


def _softmax(z: list[float], temperature: float) -> list[float]:
    scaled = [v / temperature for v in z]
    top = max(scaled)
    e = [math.exp(v - top) for v in scaled]
    return [v / sum(e) for v in e]


def reference_ckm(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, tau_t: float, smoothing: float):
    """Spec §4.3 per sample with Python floats: (targets as nested lists, reg&cor flags)."""
    rows, flags = [], []
    for b in range(s.shape[0]):
        k, label = s.shape[1], int(y[b])
        p_s = _softmax([float(v) for v in s[b]], 1.0)
        p_t = _softmax([float(v) for v in t[b]], tau_t)
        correct = max(range(k), key=lambda c: p_t[c]) == label
        regular = -math.log(p_s[label]) < -math.log(p_t[label])
        if correct and regular:
            rows.append([smoothing * (c == label) + (1 - smoothing) / k for c in range(k)])
        else:
            rows.append(p_t)
        flags.append(correct and regular)
    return torch.tensor(rows, dtype=torch.float64), torch.tensor(flags)


@pytest.mark.parametrize("classes", [5, 100])
def test_knowledge_mining_matches_float64_loop(classes: int) -> None:
    g = torch.Generator().manual_seed(classes)
    s = torch.randn(64, classes, generator=g) * 2
    t = torch.randn(64, classes, generator=g) * 2
    y = torch.randint(0, classes, (64,), generator=g)
    rows = torch.arange(64)
    t[rows[:32], y[:32]] += 5  # teacher mostly correct on the first half
    s[rows[::2], y[::2]] += 9  # the student sure on every other sample
    expected, flags = reference_ckm(s, t, y, 0.7, 0.99)
    assert 5 <= int(flags.sum()) <= 20, "the batch must exercise both branches"
    targets, mask = TF.knowledge_mining_with_mask(s, t, y, 0.7, 0.99)
    assert torch.equal(mask, flags)
    assert torch.allclose(targets.double(), expected, atol=1e-6)
    assert torch.equal(TF.knowledge_mining(s, t, y), targets)
    assert torch.allclose(targets.sum(1), torch.ones(64), atol=1e-5)
    # The rewritten rows use the true K: 0.99 + 0.01/K on the label and 0.01/K elsewhere.
    row = targets[mask][0]
    assert sorted(row.tolist())[0] == pytest.approx(0.01 / classes, rel=1e-5)
    assert row.max().item() == pytest.approx(0.99 + 0.01 / classes, rel=1e-6)


def test_knowledge_mining_hand_derived() -> None:
    # K=3, label 0. Teacher logits (0.7·log 4, 0, 0) at τ=0.7 → p_t = (4/6, 1/6, 1/6): correct.
    # Student A: p_s[0] = 0.8 > 4/6 → reg&cor → (0.99 + 0.01/3, 0.01/3, 0.01/3).
    # Student B: p_s[0] = 0.5 < 4/6 → keeps the sharpened teacher.
    t = torch.tensor([[0.7 * math.log(4.0), 0.0, 0.0]] * 2)
    s = torch.tensor([[math.log(8.0), 0.0, 0.0], [math.log(2.0), 0.0, 0.0]])  # p_s[0] = 0.8, 0.5
    y = torch.tensor([0, 0])
    out = TF.knowledge_mining(s, t, y)
    third = 0.01 / 3
    assert out[0].tolist() == pytest.approx([0.99 + third, third, third], rel=1e-6)
    assert out[1].tolist() == pytest.approx([4 / 6, 1 / 6, 1 / 6], rel=1e-6)
    # A wrong teacher is never rewritten, however unsure: label 1 with the same logits.
    assert TF.knowledge_mining(s, t, torch.tensor([1, 1]))[0].tolist() == pytest.approx([4 / 6, 1 / 6, 1 / 6])


# ------------------------------------------------------------------------ replacement / manipulation

WEAK = torch.tensor([[0.6, 0.3, 0.1]])
STRONG = torch.tensor([[0.8, 0.05, 0.15]])
LABEL = torch.tensor([0])


def test_replacement_formulas_hand_derived() -> None:
    assert TF.full_replacement(WEAK, STRONG).tolist() == STRONG.tolist()
    # partial: keep 0.6 on the label; strong's others × (1 − 0.6)/(1 − 0.8) = ×2.
    assert TF.partial_replacement(WEAK, STRONG, LABEL)[0].tolist() == pytest.approx([0.6, 0.1, 0.3])
    # confidence: strong's 0.8 on the label; weak's others × (1 − 0.8)/(1 − 0.6) = ×0.5.
    assert TF.confidence_replacement(WEAK, STRONG, LABEL)[0].tolist() == pytest.approx([0.8, 0.15, 0.05])
    # The label need not be the argmax or the first class.
    assert TF.partial_replacement(WEAK, STRONG, torch.tensor([2]))[0].tolist() == pytest.approx(
        [0.8 * 0.9 / 0.85, 0.05 * 0.9 / 0.85, 0.1]
    )


def test_manipulation_formulas_hand_derived() -> None:
    # Eq. 3: t on the label, (1 − t)/(N − 1) elsewhere.
    assert TF.label_smoothing(torch.tensor([1]), 3, 0.9)[0].tolist() == pytest.approx([0.05, 0.9, 0.05])
    # Eq. 4 (renormalised): 0.6 + 0.2 = 0.8 on the label, others × 0.2/0.4.
    assert TF.amplify(WEAK, LABEL, 0.2)[0].tolist() == pytest.approx([0.8, 0.15, 0.05])
    # min(·, 1): amplification past 1 gives the one-hot label.
    assert TF.amplify(WEAK, LABEL, 0.5)[0].tolist() == pytest.approx([1.0, 0.0, 0.0])
    # A one-hot base with label mass < 1 spreads the rest uniformly (documented fallback, never NaN).
    one_hot = torch.tensor([[1.0, 0.0, 0.0]])
    assert TF.partial_replacement(WEAK, one_hot, LABEL)[0].tolist() == pytest.approx([0.6, 0.2, 0.2])
    assert TF.smoothed_labels(torch.tensor([2]), 4, 0.99)[0].tolist() == pytest.approx(
        [0.0025, 0.0025, 0.9925, 0.0025]
    )


def test_formulas_give_distributions_on_random_inputs() -> None:
    g = torch.Generator().manual_seed(0)
    weak = torch.softmax(torch.randn(50, 10, generator=g) * 4, 1)
    strong = torch.softmax(torch.randn(50, 10, generator=g) * 4, 1)
    y = torch.randint(0, 10, (50,), generator=g)
    outs = [
        TF.partial_replacement(weak, strong, y),
        TF.confidence_replacement(weak, strong, y),
        TF.amplify(weak, y, 0.3),
        TF.label_smoothing(y, 10, 0.95),
    ]
    for out in outs:
        assert torch.allclose(out.sum(1), torch.ones(50), atol=1e-5)
        assert (out >= 0).all() and (out <= 1 + 1e-6).all()
    assert torch.allclose(TF.label_probs(outs[0], y), TF.label_probs(weak, y))
    assert torch.allclose(TF.label_probs(outs[1], y), TF.label_probs(strong, y))


# ----------------------------------------------------------------------------------- subsets


def _truth_masks() -> dict[str, torch.Tensor]:
    # All four (correct, regularization) combinations, as samples 0..3.
    return {
        "correct": torch.tensor([False, True, False, True]),
        "regularization": torch.tensor([False, False, True, True]),
    }


@pytest.mark.parametrize(
    "expression, expected",
    [
        ("all", [1, 1, 1, 1]),
        ("none", [0, 0, 0, 0]),
        ("correct", [0, 1, 0, 1]),
        ("regularization", [0, 0, 1, 1]),
        ("reg&cor", [0, 0, 0, 1]),
        ("reg|cor", [0, 1, 1, 1]),
        ("!cor", [1, 0, 1, 0]),
        ("not_correct", [1, 0, 1, 0]),
        ("not_reg", [1, 1, 0, 0]),
        ("reg & !cor", [0, 0, 1, 0]),
        ("REG | cor & !reg", [0, 1, 1, 1]),  # & binds tighter than |
        ("(reg | cor) & !reg", [0, 1, 0, 0]),
        ("!!cor", [0, 1, 0, 1]),
    ],
)
def test_subset_expressions(expression: str, expected: list[int]) -> None:
    assert Subset(expression).mask(_truth_masks()).tolist() == [bool(v) for v in expected]


@pytest.mark.parametrize(
    "expression, message",
    [
        (
            "reg&corr",
            r"unknown subset atom 'corr' \(did you mean 'cor'\?\); valid choices: all, cor, correct",
        ),
        ("reg&", "unexpected end of expression"),
        ("(reg|cor", "missing '\\)'"),
        ("reg)", r"unexpected '\)' at token 2"),
        ("reg cor", "unexpected 'cor' at token 2"),
        ("reg+cor", r"unexpected '\+'"),
        ("", "empty expression"),
        ("&reg", "unexpected '&'"),
    ],
)
def test_subset_errors_name_the_problem_and_valid_atoms(expression: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        Subset(expression)
    assert "not_regularization" in str(error.value) and "\n" not in str(error.value)


def test_subset_must_be_a_string() -> None:
    with pytest.raises(ConfigError, match="must be a string"):
        Subset(["reg", "cor"])  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------- transforms


class FixedLogits(nn.Module):
    """A stand-in second teacher that returns the same logits for any input (unit tests only)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits[: len(images)]


def _scenario(tau: float = 2.0):
    """Eight samples covering every (correct, regularization) combination at temperature τ."""
    g = torch.Generator().manual_seed(3)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    t = torch.randn(8, 4, generator=g)
    s = torch.randn(8, 4, generator=g)
    rows = torch.arange(8)
    t[rows[:4], y[:4]] += 4  # teacher correct on 0..3
    t[rows[4:], (y[4:] + 1) % 4] += 4  # wrong on 4..7
    s[rows[::2], y[::2]] += 8  # student very confident on even samples (regularization)
    s[rows[1::2], y[1::2]] -= 8  # and unsure on odd ones
    strong = torch.randn(8, 4, generator=g) * 2
    inputs = TargetInputs(torch.zeros(8, 1, 4, 4), y, s, t, tau, 0)
    return inputs, strong


def _loop_masks(inputs: TargetInputs) -> tuple[list[bool], list[bool]]:
    correct, regular = [], []
    for b in range(8):
        p_t = _softmax([float(v) for v in inputs.teacher_logits[b]], inputs.temperature)
        p_s = _softmax([float(v) for v in inputs.student_logits[b]], inputs.temperature)
        label = int(inputs.labels[b])
        correct.append(max(range(4), key=lambda c: p_t[c]) == label)
        regular.append(p_s[label] > p_t[label])
    return correct, regular


@pytest.mark.parametrize("subset", ["all", "reg&cor", "not_correct", "reg|cor", "!reg"])
@pytest.mark.parametrize("scheme", ["full", "partial", "confidence"])
def test_replace_rewrites_exactly_the_subset(scheme: str, subset: str) -> None:
    inputs, strong_logits = _scenario()
    transform = build_target_transform(
        {"name": "replace", "checkpoint": "x.pt", "scheme": scheme, "subset": subset}
    )
    transform._second = (FixedLogits(strong_logits),)
    out = transform(inputs)
    correct, regular = _loop_masks(inputs)
    assert sorted(set(zip(correct, regular))) == [(False, False), (False, True), (True, False), (True, True)]
    chosen = Subset(subset).mask({"correct": torch.tensor(correct), "regularization": torch.tensor(regular)})
    weak = torch.softmax(inputs.teacher_logits / 2.0, 1)
    strong = torch.softmax(strong_logits / 2.0, 1)
    for b in range(8):
        k = int(inputs.labels[b])
        if not chosen[b]:
            assert torch.equal(out[b], weak[b]), "targets outside the subset must be unchanged"
            continue
        expected = strong[b].clone()
        if scheme == "partial":
            expected = strong[b] * (1 - weak[b, k]) / (1 - strong[b, k])
            expected[k] = weak[b, k]
        elif scheme == "confidence":
            expected = weak[b] * (1 - strong[b, k]) / (1 - weak[b, k])
            expected[k] = strong[b, k]
        assert torch.allclose(out[b], expected, atol=1e-6)
    assert torch.allclose(out.sum(1), torch.ones(8), atol=1e-6)
    stats = {k: float(v) for k, v in transform.stats.items()}
    assert stats["frac_correct"] == sum(correct) / 8 and stats["frac_regularization"] == sum(regular) / 8
    assert stats["frac_subset"] == float(chosen.float().mean())
    assert stats["frac_rewritten"] == pytest.approx(float(chosen.float().mean()))


@pytest.mark.parametrize(
    "options",
    [
        {"scheme": "label_smoothing", "confidence": 0.9},
        {"scheme": "teacher_amplification", "delta": 0.2},
        {"scheme": "student_amplification", "delta": 0.05},
    ],
)
def test_manipulate_rewrites_exactly_reg_and_cor(options: dict) -> None:
    inputs, _ = _scenario(tau=1.5)
    transform = build_target_transform({"name": "manipulate", "subset": "reg&cor", **options})
    out = transform(inputs)
    correct, regular = _loop_masks(inputs)
    teacher = torch.softmax(inputs.teacher_logits / 1.5, 1)
    student = torch.softmax(inputs.student_logits / 1.5, 1)
    for b in range(8):
        k = int(inputs.labels[b])
        if not (correct[b] and regular[b]):
            assert torch.equal(out[b], teacher[b])
            continue
        if options["scheme"] == "label_smoothing":
            expected = torch.full((4,), 0.1 / 3)
            expected[k] = 0.9
        else:
            base = teacher[b] if options["scheme"] == "teacher_amplification" else student[b]
            top = min(float(base[k]) + options["delta"], 1.0)
            expected = base * (1 - top) / (1 - base[k])
            expected[k] = top
        assert torch.allclose(out[b], expected, atol=1e-6)
    assert float(transform.stats["frac_subset"]) == sum(c and r for c, r in zip(correct, regular)) / 8


def test_ckm_transform_uses_the_terms_temperature_for_the_student() -> None:
    inputs, _ = _scenario(tau=1.0)
    transform = build_target_transform({"name": "ckm"})
    out = transform(inputs)
    assert torch.equal(out, TF.knowledge_mining(inputs.student_logits, inputs.teacher_logits, inputs.labels))
    assert set(transform.stats) == {"frac_correct", "frac_regularization", "frac_subset", "frac_rewritten"}
    # At τ=2 the student is compared (and trained) as σ_2(s) = σ_1(s/2).
    warm = TargetInputs(inputs.images, inputs.labels, inputs.student_logits, inputs.teacher_logits, 2.0, 0)
    expected = TF.knowledge_mining(inputs.student_logits / 2, inputs.teacher_logits, inputs.labels, 0.7)
    assert torch.equal(transform(warm), expected)


def test_transform_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="valid choices: full, partial, confidence"):
        build_target_transform({"name": "replace", "checkpoint": "x", "scheme": "half"})
    with pytest.raises(ConfigError, match="unknown subset atom 'wrong'"):
        build_target_transform({"name": "manipulate", "subset": "wrong"})
    with pytest.raises(ConfigError, match="label_smoothing takes confidence"):
        build_target_transform({"name": "manipulate", "delta": 0.1})
    with pytest.raises(ConfigError, match="teacher_amplification takes delta"):
        build_target_transform({"name": "manipulate", "scheme": "teacher_amplification", "confidence": 0.9})
    with pytest.raises(ConfigError, match=r"confidence must be in \(0, 1\]"):
        build_target_transform({"name": "manipulate", "confidence": 1.5})
    with pytest.raises(ConfigError, match="smoothing"):
        build_target_transform({"name": "ckm", "smoothing": 0.0})
    with pytest.raises(ConfigError, match="teacher_temperature must be positive"):
        build_target_transform({"name": "ckm", "teacher_temperature": 0})
    with pytest.raises(DatakdError, match="not set up"):
        _ = build_target_transform({"name": "replace", "checkpoint": "x"}).second_teacher
    inputs, _ = _scenario()
    unlabelled = TargetInputs(inputs.images, None, inputs.student_logits, inputs.teacher_logits, 1.0, 0)
    for spec in ({"name": "ckm"}, {"name": "manipulate"}):
        with pytest.raises(DatakdError, match="needs hard labels"):
            build_target_transform(spec)(unlabelled)
