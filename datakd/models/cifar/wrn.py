"""Wide ResNets (Zagoruyko & Komodakis 2016): wrn_16_1, wrn_16_2, wrn_16_4, wrn_40_1, wrn_40_2, wrn_28_10,
wrn_40_4.

Same architecture and state-dict keys as RepDistiller ``models/wrn.py`` / mdistiller
``mdistiller/models/cifar/wrn.py`` (``wrn_D_W`` = depth D = 6n + 4, widening factor W): stem ``conv1``
(3x3, 16 channels, no BN), three groups ``block1..3`` each holding n pre-activation blocks under
``.layer`` (``blockK.layer.i.bn1/conv1/bn2/conv2``, and ``convShortcut`` — a bare 1x1 conv — in blocks
that change width or resolution), a final ``bn1`` + ReLU, global average pooling and ``fc``. Widths are
16, 16W, 32W, 64W.

Pre-activation detail kept from the reference: a block whose input and output widths agree adds its
*raw* input to the residual branch; a block that changes width applies BN-ReLU first and feeds that
activation to both the branch and ``convShortcut``.

Taps (RepDistiller's feature list in brackets):

* ``stem`` = ``conv1`` [f0];
* ``stage1..3`` = ``block1..3``: group outputs, i.e. residual sums *before* the next BN-ReLU, as
  RepDistiller returns them [f1..f3]; 32/16/8 px at 32x32 input;
* ``pre_logits`` = ``fc:input``: pooled vector after the final BN-ReLU [f4].

RepDistiller's ``preact`` variants of f1..f3 are ``block2.layer.0.bn1``, ``block3.layer.0.bn1`` and
``bn1`` (their BN outputs).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from datakd.errors import DatakdError
from datakd.models.cifar._blocks import he_init, tap_table
from datakd.models.registry import register_model

TAPS = tap_table("conv1", ["block1", "block2", "block3"], "fc:input")


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 with identity or 1x1 ``convShortcut``."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.same_width = in_planes == out_planes
        # the reference keeps a width-preserving strided block (never built here) without a shortcut
        self.convShortcut = (
            None
            if self.same_width
            else nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu1(self.bn1(x))
        y = self.relu2(self.bn2(self.conv1(activated)))
        if self.drop_rate > 0:
            y = F.dropout(y, p=self.drop_rate, training=self.training)
        y = self.conv2(y)
        if self.convShortcut is None:
            return x + y
        return self.convShortcut(activated) + y


class BlockGroup(nn.Module):
    """`count` pre-activation blocks kept under ``.layer`` (the reference's ``NetworkBlock``)."""

    def __init__(self, count: int, in_planes: int, out_planes: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        blocks = [PreActBlock(in_planes, out_planes, stride, drop_rate)]
        blocks += [PreActBlock(out_planes, out_planes, 1, drop_rate) for _ in range(count - 1)]
        self.layer = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """Stem conv + three block groups + BN-ReLU + global average pooling + ``fc``."""

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int = 100,
        in_channels: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise DatakdError(f"Wide ResNet depth must be 6n+4 (10, 16, 22, 28, 40, ...), got {depth}")
        per_group = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = BlockGroup(per_group, widths[0], widths[1], 1, drop_rate)
        self.block2 = BlockGroup(per_group, widths[1], widths[2], 2, drop_rate)
        self.block3 = BlockGroup(per_group, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        he_init(self, zero_linear_bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.relu(self.bn1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _factory(depth: int, widen_factor: int) -> Callable[..., WideResNet]:
    def build(num_classes: int = 100, in_channels: int = 3, drop_rate: float = 0.0) -> WideResNet:
        return WideResNet(depth, widen_factor, num_classes, in_channels, drop_rate)

    return build


for _depth, _widen in ((16, 1), (16, 2), (16, 4), (40, 1), (40, 2), (28, 10), (40, 4)):
    register_model(
        f"wrn_{_depth}_{_widen}",
        taps=TAPS,
        family="cifar",
        description=f"Wide ResNet {_depth}-{_widen} for CIFAR, RepDistiller keys",
    )(_factory(_depth, _widen))
