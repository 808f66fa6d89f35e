"""MobileNetV2 for CIFAR with width multiplier 0.5: mobilenetv2 (RepDistiller's ``mobile_half``).

Same architecture and state-dict keys as RepDistiller ``models/mobilenetv2.py`` / mdistiller
``mdistiller/models/cifar/mobilenetv2.py`` (``mobile_half`` = ``mobilenetv2_T_w(T=6, W=0.5)``, named
``MobileNetV2`` in mdistiller):

* ``conv1`` = Sequential(conv3x3 stride 2, BN, ReLU), 3 -> 16 channels (``conv1.0``, ``conv1.1``);
* ``blocks`` = ModuleList of seven groups of inverted-residual blocks (expansion t, output c*W,
  repeats n, first stride s): (1,16,1,1) (6,24,2,1) (6,32,3,2) (6,64,4,2) (6,96,3,1) (6,160,3,2)
  (6,320,1,1); block keys ``blocks.G.i.conv.{0,1,3,4,6,7}`` = 1x1 expand conv, BN, depthwise 3x3
  conv, BN, 1x1 linear projection conv, BN (ReLUs at ``conv.2``/``conv.5``). Unlike torchvision the
  expand conv exists even for t = 1. A block adds its input when stride is 1 and widths agree;
* ``conv2`` = Sequential(conv1x1, BN, ReLU) to 1280 channels (not scaled down for W < 1);
* global average pooling; ``classifier`` = Sequential(Linear(1280, classes)) -> ``classifier.0``.

Taps (RepDistiller's feature list in brackets):

* ``stem`` = ``conv1`` [f0], 16 px at 32x32 input;
* ``stage1..4`` = ``blocks.1``, ``blocks.2``, ``blocks.4``, ``blocks.6``: the group outputs
  RepDistiller returns (linear bottleneck outputs, no ReLU) [f1..f4], 16/8/4/2 px;
* ``pre_logits`` = ``classifier:input``: pooled 1280-d vector [f5].
"""

from __future__ import annotations

import torch
from torch import nn

from datakd.models.cifar._blocks import he_init, tap_table
from datakd.models.registry import register_model

TAPS = tap_table("conv1", ["blocks.1", "blocks.2", "blocks.4", "blocks.6"], "classifier:input")

# (expansion, output channels before the width multiplier, repeats, stride of the first block); an
# expansion of 6 stands for the model's `expansion` argument, the first group never expands
SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int) -> nn.Sequential:
    padding = kernel_size // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class InvertedResidual(nn.Module):
    """1x1 expand -> depthwise 3x3 -> 1x1 linear projection, residual when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, out_channels, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.use_residual else y


class MobileNetV2Cifar(nn.Module):
    """MobileNetV2 with a stride-2 stem and global pooling, sized for 32x32 inputs."""

    def __init__(
        self, num_classes: int = 100, in_channels: int = 3, width_mult: float = 0.5, expansion: int = 6
    ) -> None:
        super().__init__()
        channels = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(in_channels, channels, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in SETTINGS:
            out_channels = int(c * width_mult)
            ratio = 1 if t == 1 else expansion
            group = []
            for index in range(n):
                group.append(InvertedResidual(channels, out_channels, s if index == 0 else 1, ratio))
                channels = out_channels
            self.blocks.append(nn.Sequential(*group))
        last = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(channels, last, 1, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(last, num_classes))
        he_init(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for group in self.blocks:
            x = group(x)
        x = self.conv2(x)
        return self.classifier(torch.flatten(self.avgpool(x), 1))


@register_model("mobilenetv2", taps=TAPS, family="cifar")
def mobilenetv2(
    num_classes: int = 100, in_channels: int = 3, width_mult: float = 0.5, expansion: int = 6
) -> MobileNetV2Cifar:
    """MobileNetV2 for CIFAR, width 0.5 (RepDistiller mobile_half / mdistiller MobileNetV2 keys)."""
    return MobileNetV2Cifar(num_classes, in_channels, width_mult, expansion)
