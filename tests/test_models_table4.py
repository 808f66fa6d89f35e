"""Role-wise KD Table 4's networks (PreResNet, PyramidNet, WRN-16-4) against the parameter counts their own
papers publish. Those papers count the convolution and fully-connected weights (and biases) of the CIFAR-10
models (10 classes), not BatchNorm — the convention of `conv_fc_parameters`, which reproduces every
published number to the digits printed; counting BN as well would overshoot PyramidNet by 0.2 M."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from datakd.models import create
from datakd.models.registry import model_taps

# name: (published millions as printed, source)
PUBLISHED = {
    "preresnet32": ("0.46", "He et al. 2016a (ResNet), Table 6"),
    "preresnet44": ("0.66", "He et al. 2016a (ResNet), Table 6"),
    "preresnet56": ("0.85", "He et al. 2016a (ResNet), Table 6"),
    "preresnet110": ("1.7", "He et al. 2016a (ResNet), Table 6; He et al. 2016b (pre-act), Table 3"),
    "preresnet164": ("1.7", "He et al. 2016b (Identity Mappings), Table 3"),
    "pyramidnet_200_240": ("26.6", "Han et al. 2017 (PyramidNet), Table 4"),
    "pyramidnet_272_200": ("26.0", "Han et al. 2017 (PyramidNet), Table 4"),
    "wrn_16_4": ("2.7", "Zagoruyko & Komodakis 2016 (WRN)"),
    "wrn_28_10": ("36.5", "Zagoruyko & Komodakis 2016 (WRN), Table 4"),
}


def conv_fc_parameters(model: nn.Module) -> int:
    return sum(
        p.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) for p in m.parameters()
    )


@pytest.mark.parametrize(("name", "published"), [(n, v[0]) for n, v in sorted(PUBLISHED.items())])
def test_parameter_count_matches_the_published_one(name: str, published: str) -> None:
    digits = len(published.split(".")[1])
    assert f"{conv_fc_parameters(create(name, 10)) / 1e6:.{digits}f}" == published


def test_pyramidnet_width_grows_by_alpha_over_the_units() -> None:
    """PyramidNet-200 (α = 240): 66 bottleneck units, widths round(16 + 240·k/66), outputs ×4 (no jumps)."""
    model = create("pyramidnet_200_240", 10)
    units = [u for layer in (model.layer1, model.layer2, model.layer3) for u in layer]
    assert len(units) == 66
    widths = [u.conv1.out_channels for u in units]
    assert widths == [round(16 + 240 * k / 66) for k in range(1, 67)]
    assert model.fc.in_features == 4 * 256 and widths[-1] == 256
    # no parameterised shortcut anywhere: the identity is pooled and zero-padded
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride == (2, 2)
                   for m in model.modules())  # fmt: skip


def test_preresnet_is_pre_activation() -> None:
    """Each block starts with BN-ReLU on its input and adds its raw input back (no ReLU after the sum)."""
    model = create("preresnet56", 10).eval()
    block = model.layer1[1]
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        expected = x + block.conv2(torch.relu(block.bn2(block.conv1(torch.relu(block.bn1(x))))))
        torch.testing.assert_close(block(x), expected)
        assert (block(x) < 0).any()  # the sum is not rectified
    assert set(model_taps(model)) >= {"stem", "stage1", "stage2", "stage3", "pre_logits"}
    assert len(model.layer1) == 9 and len(create("preresnet164", 10).layer1) == 18
