"""Pre-activation ResNets for CIFAR (He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016):
preresnet20/32/44/56/110 (basic blocks, depth 6n+2) and preresnet164 (bottlenecks, depth 9n+2), the
role-wise KD paper's Table 4 teacher (PreResNet-164) and students (PreResNet-32/44/56).

Layout (the common CIFAR pre-act code, e.g. the "preresnet" of pytorch-classification): stem ``conv1``
(3x3, 16 channels, no BN), three stages ``layer1..3`` (widths 16/32/64, ×4 at the bottleneck output), a
final ``bn`` + ReLU, global average pooling and ``fc``. A block is BN-ReLU-conv (×2, or ×3 for the
bottleneck) plus the shortcut; when width or resolution change, the shortcut is a bare 1x1 conv (option B)
applied to the block's *raw* input. Written from the paper's description.

Taps: ``stem`` = ``conv1``; ``stage1..3`` = ``layer1..3`` (residual sums before the next BN-ReLU, 32/16/8 px
at 32x32 input); ``pre_logits`` = ``fc:input``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from datakd.errors import DatakdError
from datakd.models.cifar._blocks import conv3x3, he_init, tap_table
from datakd.models.registry import register_model

TAPS = tap_table("conv1", ["layer1", "layer2", "layer3"], "fc:input")


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module | None:
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class PreActBasic(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 + identity or 1x1 conv shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.relu = nn.ReLU()
        self.downsample = _shortcut(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(self.relu(self.bn1(x)))
        y = self.conv2(self.relu(self.bn2(y)))
        return y + (x if self.downsample is None else self.downsample(x))


class PreActBottleneck(nn.Module):
    """BN-ReLU-conv1x1, BN-ReLU-conv3x3 (stride), BN-ReLU-conv1x1 (×4) + identity or 1x1 conv shortcut."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.relu = nn.ReLU()
        self.downsample = _shortcut(in_planes, planes * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(self.relu(self.bn1(x)))
        y = self.conv2(self.relu(self.bn2(y)))
        y = self.conv3(self.relu(self.bn3(y)))
        return y + (x if self.downsample is None else self.downsample(x))


class PreResNet(nn.Module):
    """Stem conv + three pre-activation stages + BN-ReLU + global average pooling + ``fc``."""

    def __init__(self, depth: int, bottleneck: bool, num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        block: type[PreActBasic] | type[PreActBottleneck] = PreActBottleneck if bottleneck else PreActBasic
        per = 9 if bottleneck else 6
        if depth < per + 2 or (depth - 2) % per:
            kind = "9n+2 with bottlenecks" if bottleneck else "6n+2"
            raise DatakdError(f"PreResNet depth must be {kind}, got {depth}")
        count = (depth - 2) // per
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, padding=1, bias=False)
        in_planes = 16
        for index, (planes, stride) in enumerate(zip((16, 32, 64), (1, 2, 2)), start=1):
            blocks = []
            for k in range(count):
                blocks.append(block(in_planes, planes, stride if k == 0 else 1))
                in_planes = planes * block.expansion
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
        self.bn = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = self.relu(self.bn(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _factory(depth: int, bottleneck: bool) -> Callable[..., PreResNet]:
    def build(num_classes: int = 100, in_channels: int = 3) -> PreResNet:
        return PreResNet(depth, bottleneck, num_classes=num_classes, in_channels=in_channels)

    return build


for _depth, _bottleneck in ((20, False), (32, False), (44, False), (56, False), (110, False), (164, True)):
    kind = "bottleneck" if _bottleneck else "basic"
    register_model(
        f"preresnet{_depth}",
        taps=TAPS,
        family="cifar",
        description=f"pre-activation ResNet-{_depth} for CIFAR ({kind} blocks, 1x1 conv shortcuts)",
    )(_factory(_depth, _bottleneck))
