"""DoReFa quantised zoo models (`NAME@wKaK`): quantiser values and straight-through gradients, which layers
stay full precision, where activations are quantised, unchanged state-dict keys and init_from_teacher."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from datakd.api.features import FeatureRecorder
from datakd.commands.listing import rows
from datakd.engine.build import build_trainer
from datakd.errors import DatakdError
from datakd.models import create
from datakd.models.quantized import (
    QuantAct,
    QuantConv2d,
    QuantLinear,
    quantize_activation,
    quantize_unit,
    quantize_weight,
)
from tests.helpers import tiny_config, train_tiny_teacher


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_quantize_unit_levels_and_ste(bits):
    levels = 2**bits - 1
    x = torch.rand(1000, dtype=torch.float64, requires_grad=True)
    q = quantize_unit(x, bits)
    expected = np.round(x.detach().numpy() * levels) / levels  # round-half-even on ties, like torch.round
    np.testing.assert_allclose(q.detach().numpy(), expected, atol=1e-12)
    assert (
        len(torch.unique(quantize_unit(torch.linspace(0, 1, 5001, dtype=torch.float64), bits))) == levels + 1
    )
    q.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # straight-through


def test_quantize_activation_clips_with_gradient_inside_only():
    x = torch.tensor([-0.5, 0.1, 0.49, 0.8, 1.7], requires_grad=True)
    q = quantize_activation(x, 2)
    assert q.tolist() == pytest.approx([0.0, 0.0, 1 / 3, 2 / 3, 1.0])
    q.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize("bits", [2, 4])
def test_quantize_weight_matches_formula_and_gradient(bits):
    w = torch.randn(8, 4, 3, 3, dtype=torch.float64) * 0.3
    w.requires_grad_(True)
    q = quantize_weight(w, bits)
    # independent float64 computation of Eq. 8 (with tanh(w) in the numerator), element by element
    flat = w.detach().numpy().ravel()
    top = max(abs(np.tanh(v)) for v in flat)
    n = 2**bits - 1
    expected = [2 * np.round(n * (np.tanh(v) / (2 * top) + 0.5)) / n - 1 for v in flat]
    np.testing.assert_allclose(q.detach().numpy().ravel(), expected, atol=1e-12)
    assert set(np.round((q.detach().numpy().ravel() + 1) * n / 2, 9)) <= set(range(n + 1))
    assert float(q.detach().abs().max()) == pytest.approx(1.0)  # the largest |w| maps to ±1
    # straight-through: the gradient is that of the un-rounded map tanh(w) / max|tanh(w)|
    g = torch.randn_like(w)
    (grad,) = torch.autograd.grad((q * g).sum(), w)
    w2 = w.detach().clone().requires_grad_(True)
    t = torch.tanh(w2)
    (ref,) = torch.autograd.grad(((t / t.abs().max()) * g).sum(), w2)
    torch.testing.assert_close(grad, ref)
    assert quantize_weight(w, 32) is w


def test_resnet18_quantised_layout_and_keys():
    fp = create("resnet18", 100)
    q = create("resnet18@w4a4", 100)
    assert list(fp.state_dict()) == list(q.state_dict())
    assert type(q.conv1) is nn.Conv2d and type(q.linear) is nn.Linear  # first and last layer full precision
    quantised = [n for n, m in q.named_modules() if isinstance(m, QuantConv2d)]
    convs = [n for n, m in fp.named_modules() if isinstance(m, nn.Conv2d)]
    assert quantised == convs[1:]  # every other conv, shortcuts included
    assert (
        isinstance(q.layer2[0].relu, QuantAct)
        and type(q.layer2[0].act) is nn.ReLU
        and type(q.relu) is nn.ReLU
    )
    q.load_state_dict(fp.state_dict())
    q.eval()
    seen = {}
    hook = q.layer3[0].conv1.register_forward_pre_hook(lambda m, a: seen.setdefault("in", a[0].detach()))
    with FeatureRecorder(q, ["stage2", "stage3"]) as recorder:
        _, feats = recorder.forward(torch.randn(4, 3, 32, 32) * 3)
    hook.remove()
    x = seen["in"]  # block input: quantised to 4 bits in [0, 1]
    assert x.min() >= 0 and x.max() <= 1 and torch.allclose(x * 15, (x * 15).round(), atol=1e-5)
    assert feats["stage2"].max() > 1.0  # stage outputs stay ReLU (what II-KD taps)
    # 32/32 is exactly the full-precision network
    same = create("resnet18@w32a32", 10)
    ref = create("resnet18", 10)
    same.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(same.eval()(x), ref.eval()(x), rtol=0, atol=0)


def test_generic_placement_keeps_last_relu():
    model = create("alexnet_cifar@w2a2", 10)
    assert isinstance(model.relu1, QuantAct) and isinstance(model.relu_fc1, QuantAct)
    assert type(model.relu_fc2) is nn.ReLU
    assert isinstance(model.fc1, QuantLinear) and type(model.classifier) is nn.Linear
    assert type(model.conv1) is nn.Conv2d and isinstance(model.conv2, QuantConv2d)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    wrn = create("wrn_16_2@w4a4", 10)
    assert type(wrn.relu) is nn.ReLU and isinstance(wrn.block1.layer[0].relu1, QuantAct)


def test_bad_names():
    with pytest.raises(DatakdError, match="weight bits must be one of"):
        create("resnet18@w1a4", 10)
    with pytest.raises(DatakdError, match="activation bits"):
        create("resnet18@w4a9", 10)
    with pytest.raises(DatakdError, match="CIFAR zoo"):
        create("mobilenetv1@w4a4", 10)
    with pytest.raises(DatakdError, match="unknown model"):
        create("resnet7@w4a4", 10)
    with pytest.raises(DatakdError, match="option"):
        create("resnet18@w4a4", 10, widen=2)
    assert any(name == "NAME@wKaK" for name, _ in rows("models"))


def test_init_from_teacher_copies_every_tensor(tmp_path):
    teacher = train_tiny_teacher(tmp_path / "teacher", epochs=1, model="resnet8")
    cfg = tiny_config(
        tmp_path / "student",
        epochs=1,
        student={"name": "resnet8@w4a4", "kwargs": {"in_channels": 1}, "init_from_teacher": True},
        teacher={"checkpoint": str(teacher)},
        loss={"ce": {"weight": 1.0}},
    )
    trainer = build_trainer(cfg, "distill")
    teacher_state = trainer.teacher.state_dict()
    student_state = trainer.student_module.state_dict()
    assert list(teacher_state) == list(student_state)
    for key, value in teacher_state.items():
        assert torch.equal(value, student_state[key]), key
