"""ShuffleNet V2 for CIFAR (Ma et al. 2018), width 1x: shufflev2.

Same architecture and state-dict keys as RepDistiller ``models/ShuffleNetv2.py`` / mdistiller
``mdistiller/models/cifar/ShuffleNetv2.py`` (``ShuffleV2`` = ``net_size=1``): stem ``conv1`` (1x1, 24
channels, stride 1, no max-pool) + ``bn1``; stages ``layer1..3`` = one down-sampling unit
(``layerK.0``) followed by 3/7/3 basic units (``layerK.1..``), widths 116/232/464; a 1x1 ``conv2`` +
``bn2`` to 1024 channels; global average pooling; ``linear``.

* basic unit (keys ``conv1..3``, ``bn1..3``): split channels in half, keep the first half, run the
  second through 1x1-BN-ReLU, depthwise 3x3-BN, 1x1-BN-ReLU, concatenate, shuffle (2 groups);
* down-sampling unit (keys ``conv1..5``, ``bn1..5``): left branch depthwise 3x3 stride 2 (``conv1``)
  then 1x1-ReLU (``conv2``); right branch 1x1-ReLU (``conv3``), depthwise 3x3 stride 2 (``conv4``),
  1x1-ReLU (``conv5``); each produces half the stage width; concatenate, shuffle.

Taps (RepDistiller's feature list in brackets):

* ``stem`` = ``relu`` [f0], 32 px at 32x32 input;
* ``stage1..3`` = ``layer1..3``: stage outputs (shuffled concatenations) [f1..f3], 16/8/4 px;
* ``pre_logits`` = ``linear:input``: pooled 1024-d vector after ``conv2``-``bn2``-ReLU [f4].
"""

from __future__ import annotations

import torch
from torch import nn

from datakd.errors import choice_error
from datakd.models.cifar._blocks import channel_shuffle, tap_table
from datakd.models.registry import register_model

TAPS = tap_table("relu", ["layer1", "layer2", "layer3"], "linear:input")

# net_size -> (stage widths, final 1x1 width, basic units per stage): the reference's 0.5/1/1.5/2 sizes
CONFIGS: dict[float, tuple[tuple[int, int, int], int, tuple[int, int, int]]] = {
    0.5: ((48, 96, 192), 1024, (3, 7, 3)),
    1.0: ((116, 232, 464), 1024, (3, 7, 3)),
    1.5: ((176, 352, 704), 1024, (3, 7, 3)),
    2.0: ((224, 488, 976), 2048, (3, 7, 3)),
}


def _conv_bn(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, depthwise: bool = False
) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    conv = nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=kernel_size // 2,
        groups=in_channels if depthwise else 1,
        bias=False,
    )
    return conv, nn.BatchNorm2d(out_channels)


class BasicUnit(nn.Module):
    """Channel split; half goes through 1x1 -> dw 3x3 -> 1x1; concat and shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.conv1, self.bn1 = _conv_bn(half, half, 1)
        self.conv2, self.bn2 = _conv_bn(half, half, 3, depthwise=True)
        self.conv3, self.bn3 = _conv_bn(half, half, 1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[1] // 2
        keep, work = x[:, :half], x[:, half:]
        work = self.relu(self.bn1(self.conv1(work)))
        work = self.bn2(self.conv2(work))
        work = self.relu(self.bn3(self.conv3(work)))
        return channel_shuffle(torch.cat([keep, work], dim=1), 2)


class DownUnit(nn.Module):
    """Two stride-2 branches over the whole input, each giving half the output width; concat, shuffle."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        half = out_channels // 2
        self.conv1, self.bn1 = _conv_bn(in_channels, in_channels, 3, stride=2, depthwise=True)
        self.conv2, self.bn2 = _conv_bn(in_channels, half, 1)
        self.conv3, self.bn3 = _conv_bn(in_channels, half, 1)
        self.conv4, self.bn4 = _conv_bn(half, half, 3, stride=2, depthwise=True)
        self.conv5, self.bn5 = _conv_bn(half, half, 1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = self.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.relu(self.bn3(self.conv3(x)))
        right = self.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], dim=1), 2)


class ShuffleNetV2(nn.Module):
    """1x1 stem, three stages (down unit + basic units), 1x1 conv, global average pooling, ``linear``."""

    def __init__(self, net_size: float = 1.0, num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        widths, last, units = CONFIGS[float(net_size)]
        self.conv1 = nn.Conv2d(in_channels, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU()  # stem activation (the ``stem`` tap); the head has its own
        channels = 24
        for index, (width, count) in enumerate(zip(widths, units), start=1):
            stage = [DownUnit(channels, width)] + [BasicUnit(width) for _ in range(count)]
            self.add_module(f"layer{index}", nn.Sequential(*stage))
            channels = width
        self.conv2, self.bn2 = _conv_bn(channels, last, 1)
        self.head_act = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.head_act(self.bn2(self.conv2(x)))
        return self.linear(torch.flatten(self.avgpool(x), 1))


@register_model("shufflev2", taps=TAPS, family="cifar")
def shufflev2(num_classes: int = 100, in_channels: int = 3, net_size: float = 1.0) -> ShuffleNetV2:
    """ShuffleNet V2 1x (widths 116/232/464/1024) for CIFAR, RepDistiller ShuffleV2 keys."""
    if float(net_size) not in CONFIGS:
        raise choice_error("ShuffleNetV2 net_size", net_size, [str(k) for k in CONFIGS])
    return ShuffleNetV2(net_size, num_classes, in_channels)
