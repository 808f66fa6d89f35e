"""PyramidNet for CIFAR (Han, Kim & Kim, "Deep Pyramidal Residual Networks", CVPR 2017), bottleneck
version: pyramidnet_200_240 (depth 200, widening factor α = 240), the role-wise KD paper's Table 4 teacher,
and pyramidnet_272_200.

Written from the paper: the width grows by α/N at every one of the N = (depth − 2)/3 bottleneck units
(additive widening, 16 + α·k/N rounded, ×4 at each unit's output), so there is no jump at the stage
boundaries. A unit is BN, conv1x1, BN-ReLU, conv3x3 (stride 2 at the first unit of stages 2 and 3),
BN-ReLU, conv1x1 (×4), BN — no ReLU after the addition and none before the first conv (the paper's
"BN-only" first layer). The shortcut is the identity, average-pooled 2x2 when the resolution halves,
zero-padded to the wider output (no parameters). Stem: conv3x3 (16) + BN; head: BN-ReLU, global average
pooling, ``fc``.

Taps: ``stem`` = ``bn1``; ``stage1..3`` = ``layer1..3`` (32/16/8 px at 32x32 input); ``pre_logits`` =
``fc:input``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from datakd.errors import DatakdError
from datakd.models.cifar._blocks import conv3x3, he_init, tap_table
from datakd.models.registry import register_model

TAPS = tap_table("bn1", ["layer1", "layer2", "layer3"], "fc:input")


class PyramidBottleneck(nn.Module):
    """BN-conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1-BN + pooled, zero-padded identity."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn4 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(self.bn1(x))
        y = self.conv2(self.relu(self.bn2(y)))
        y = self.bn4(self.conv3(self.relu(self.bn3(y))))
        shortcut = F.avg_pool2d(x, 2, ceil_mode=True) if self.stride != 1 else x
        extra = y.shape[1] - shortcut.shape[1]
        if extra > 0:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, extra))
        return y + shortcut


class PyramidNet(nn.Module):
    """Stem + three stages of bottleneck units with additively growing width + BN-ReLU-pool-``fc``."""

    def __init__(self, depth: int, alpha: float, num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        if depth < 11 or (depth - 2) % 9:
            raise DatakdError(f"bottleneck PyramidNet depth must be 9n+2 (164, 200, 272, ...), got {depth}")
        per_stage = (depth - 2) // 9
        step = alpha / (3 * per_stage)
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        width, in_planes = 16.0, 16
        for index, stride in enumerate((1, 2, 2), start=1):
            units = []
            for k in range(per_stage):
                width += step
                planes = round(width)
                units.append(PyramidBottleneck(in_planes, planes, stride if k == 0 else 1))
                in_planes = planes * 4
            self.add_module(f"layer{index}", nn.Sequential(*units))
        self.bn_final = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.bn1(self.conv1(x)))))
        x = self.relu(self.bn_final(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _factory(depth: int, alpha: float) -> Callable[..., PyramidNet]:
    def build(num_classes: int = 100, in_channels: int = 3) -> PyramidNet:
        return PyramidNet(depth, alpha, num_classes=num_classes, in_channels=in_channels)

    return build


for _depth, _alpha in ((200, 240), (272, 200)):
    register_model(
        f"pyramidnet_{_depth}_{_alpha}",
        taps=TAPS,
        family="cifar",
        description=f"bottleneck PyramidNet-{_depth} (alpha {_alpha}) for CIFAR",
    )(_factory(_depth, _alpha))
