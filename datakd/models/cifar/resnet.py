"""CIFAR ResNets (He et al. 2016, the 6n+2 variant): resnet8/14/20/32/44/56/110, resnet8x4, resnet32x4.

Same architecture and state-dict keys as RepDistiller ``models/resnet.py`` / mdistiller
``mdistiller/models/cifar/resnet.py``: a 3x3 stem (``conv1``, ``bn1``) and three stages
``layer1..3`` of n = (depth - 2) / 6 basic blocks (``layerK.i.conv1/bn1/conv2/bn2``, projection
``layerK.0.downsample.0/1`` where the shape changes), global average pooling and ``fc``. Widths are
16/16/32/64, or 32/64/128/256 for the "x4" models.

Taps (RepDistiller's feature list in brackets):

* ``stem`` = ``relu``: stem conv-BN-ReLU output [f0];
* ``stage1..3`` = ``layer1..3``: stage outputs after the final ReLU [f1..f3], 32/16/8 px at 32x32 input;
* ``pre_logits`` = ``fc:input``: the pooled feature vector [f4].

A stage's pre-activation sum (RepDistiller's ``preact=True``) is ``layerK.<last block>.act:input``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from datakd.errors import DatakdError
from datakd.models.cifar._blocks import BasicBlock, conv3x3, he_init, residual_stage, tap_table
from datakd.models.registry import register_model

TAPS = tap_table("relu", ["layer1", "layer2", "layer3"], "fc:input")

NARROW = (16, 16, 32, 64)
WIDE = (32, 64, 128, 256)  # the "x4" models


class CifarResNet(nn.Module):
    """Stem + three stages of basic blocks + global average pooling + linear classifier."""

    def __init__(
        self, depth: int, widths: tuple[int, int, int, int], num_classes: int = 100, in_channels: int = 3
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise DatakdError(f"CIFAR ResNet depth must be 6n+2 (8, 14, 20, 32, ...), got {depth}")
        per_stage = (depth - 2) // 6
        stem, *stage_widths = widths
        self.conv1 = conv3x3(in_channels, stem)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU()
        in_planes = stem
        for index, (planes, stride) in enumerate(zip(stage_widths, (1, 2, 2)), start=1):
            stage = residual_stage(BasicBlock, in_planes, planes, per_stage, stride, shortcut="downsample")
            self.add_module(f"layer{index}", stage)
            in_planes = planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _factory(depth: int, widths: tuple[int, int, int, int]) -> Callable[..., CifarResNet]:
    def build(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
        return CifarResNet(depth, widths, num_classes=num_classes, in_channels=in_channels)

    return build


for _depth in (8, 14, 20, 32, 44, 56, 110):
    register_model(
        f"resnet{_depth}",
        taps=TAPS,
        family="cifar",
        description=f"CIFAR ResNet-{_depth} (widths 16/32/64), RepDistiller keys",
    )(_factory(_depth, NARROW))

for _depth in (8, 32):
    register_model(
        f"resnet{_depth}x4",
        taps=TAPS,
        family="cifar",
        description=f"CIFAR ResNet-{_depth}x4 (widths 64/128/256), RepDistiller keys",
    )(_factory(_depth, WIDE))
