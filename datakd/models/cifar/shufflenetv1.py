"""ShuffleNet V1 for CIFAR (Zhang et al. 2018), 3 groups: shufflev1.

Same architecture and state-dict keys as RepDistiller ``models/ShuffleNetv1.py`` / mdistiller
``mdistiller/models/cifar/ShuffleNetv1.py`` (``ShuffleV1``): stem ``conv1`` (1x1, 24 channels, stride
1) + ``bn1``; stages ``layer1..3`` with 4/8/4 units and output widths 240/480/960; ``linear``.
A unit (``layerK.i``) is grouped 1x1 conv ``conv1`` (1 group when its input is the 24-channel stem,
else 3) + ``bn1``, channel shuffle, depthwise 3x3 ``conv2`` + ``bn2``, grouped 1x1 ``conv3`` + ``bn3``;
the first unit of a stage has stride 2 and concatenates a 3x3 average-pooled copy of its input (so
its branch only produces ``width - in_channels`` channels), the others add their input. Bottleneck
width is a quarter of the branch output.

Taps (RepDistiller's feature list in brackets):

* ``stem`` = ``relu`` [f0], 32 px at 32x32 input;
* ``stage1..3`` = ``layer1..3``: stage outputs after the final ReLU [f1..f3], 16/8/4 px;
* ``pre_logits`` = ``linear:input``: pooled 960-d vector [f4].

A stage's pre-activation (concatenation or sum before the ReLU) is ``layerK.<last unit>.act:input``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from datakd.models.cifar._blocks import channel_shuffle, tap_table
from datakd.models.registry import register_model

TAPS = tap_table("relu", ["layer1", "layer2", "layer3"], "linear:input")

STEM = 24


class ShuffleUnit(nn.Module):
    """Grouped 1x1 -> shuffle -> depthwise 3x3 -> grouped 1x1, joined to the input by sum or concat."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int) -> None:
        super().__init__()
        mid = out_channels // 4
        first_groups = 1 if in_channels == STEM else groups  # the stem is too narrow to split
        self.stride = stride
        self.first_groups = first_groups
        self.conv1 = nn.Conv2d(in_channels, mid, kernel_size=1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, kernel_size=3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_channels, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = channel_shuffle(self.relu(self.bn1(self.conv1(x))), self.first_groups)
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        if self.stride == 2:
            return self.act(torch.cat([y, F.avg_pool2d(x, 3, stride=2, padding=1)], dim=1))
        return self.act(y + x)


class ShuffleNetV1(nn.Module):
    """1x1 stem, three stages of shuffle units, global average pooling, ``linear``."""

    def __init__(
        self,
        widths: tuple[int, int, int] = (240, 480, 960),
        units: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
        num_classes: int = 100,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, STEM, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM)
        self.relu = nn.ReLU()
        channels = STEM
        for index, (width, count) in enumerate(zip(widths, units), start=1):
            stage = [ShuffleUnit(channels, width - channels, 2, groups)]
            stage += [ShuffleUnit(width, width, 1, groups) for _ in range(count - 1)]
            self.add_module(f"layer{index}", nn.Sequential(*stage))
            channels = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(torch.flatten(self.avgpool(x), 1))


@register_model("shufflev1", taps=TAPS, family="cifar")
def shufflev1(num_classes: int = 100, in_channels: int = 3) -> ShuffleNetV1:
    """ShuffleNet V1 (g=3, widths 240/480/960) for CIFAR, RepDistiller ShuffleV1 keys."""
    return ShuffleNetV1(num_classes=num_classes, in_channels=in_channels)
