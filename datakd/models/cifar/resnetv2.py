"""Four-stage ResNet18/34/50 with a 3x3 stride-1 stem for 32x32 inputs: resnet18, resnet34, resnet50.

Same architecture and state-dict keys as RepDistiller ``models/resnetv2.py`` / mdistiller
``mdistiller/models/cifar/resnetv2.py`` (``ResNet18``, ``ResNet34``, ``ResNet50``): stem ``conv1``
(3x3, 64 channels, stride 1, no max-pool) and ``bn1``; stages ``layer1..4`` (64/128/256/512 planes,
strides 1/2/2/2) of basic blocks (18, 34) or bottlenecks (50, expansion 4) whose projection branch is
named ``shortcut`` (``layerK.0.shortcut.0/1``); global average pooling and ``linear``. The ImageNet
(torchvision) ResNets are ``tv:resnet18`` etc.

Taps (RepDistiller's feature list in brackets):

* ``stem`` = ``relu``: stem conv-BN-ReLU output [f0];
* ``stage1..4`` = ``layer1..4``: stage outputs after the final ReLU [f1..f4], 32/16/8/4 px at 32x32;
* ``pre_logits`` = ``linear:input``: the pooled feature vector [f5].

A stage's pre-activation sum is ``layerK.<last block>.act:input``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from datakd.models.cifar._blocks import (
    BasicBlock,
    Bottleneck,
    ResidualBlock,
    conv3x3,
    he_init,
    residual_stage,
    tap_table,
)
from datakd.models.registry import register_model

TAPS = tap_table("relu", ["layer1", "layer2", "layer3", "layer4"], "linear:input")


class ResNet4Stage(nn.Module):
    """3x3 stem + four residual stages + global average pooling + ``linear``."""

    def __init__(
        self,
        block: type[ResidualBlock],
        blocks_per_stage: tuple[int, int, int, int],
        num_classes: int = 100,
        in_channels: int = 3,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, 64)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        in_planes = 64
        for index, (planes, count, stride) in enumerate(
            zip((64, 128, 256, 512), blocks_per_stage, (1, 2, 2, 2)), start=1
        ):
            stage = residual_stage(block, in_planes, planes, count, stride, shortcut="shortcut")
            self.add_module(f"layer{index}", stage)
            in_planes = planes * block.expansion
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_planes, num_classes)
        he_init(self)
        if zero_init_residual:  # start every residual branch at zero (Goyal et al. 2017)
            for module in self.modules():
                if isinstance(module, Bottleneck):
                    nn.init.zeros_(module.bn3.weight)
                elif isinstance(module, BasicBlock):
                    nn.init.zeros_(module.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.linear(torch.flatten(self.avgpool(x), 1))


def _factory(block: type[ResidualBlock], counts: tuple[int, int, int, int]) -> Callable[..., ResNet4Stage]:
    def build(num_classes: int = 100, in_channels: int = 3, zero_init_residual: bool = False) -> ResNet4Stage:
        return ResNet4Stage(block, counts, num_classes, in_channels, zero_init_residual)

    return build


for _name, _block, _counts in (
    ("resnet18", BasicBlock, (2, 2, 2, 2)),
    ("resnet34", BasicBlock, (3, 4, 6, 3)),
    ("resnet50", Bottleneck, (3, 4, 6, 3)),
):
    register_model(
        _name,
        taps=TAPS,
        family="cifar",
        description=f"ResNet{_name[6:]} with a 3x3 stem for 32x32 inputs (RepDistiller resnetv2)",
    )(_factory(_block, _counts))
