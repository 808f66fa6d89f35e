"""Pieces shared by the CIFAR families: residual blocks, a stage builder, channel shuffle, weight init and
the tap-table helper.

The two ResNet files (``resnet.py`` for resnet8..110/x4, ``resnetv2.py`` for resnet18/34/50) use the same
residual blocks; they only differ in what RepDistiller called the projection branch (``downsample`` in
the CIFAR ResNets, ``shortcut`` in the four-stage ones), which is why the block takes that name as an
argument. The projection (1x1 conv + BN) exists only when a block changes resolution or width, exactly
as in the reference code, so the state-dict keys agree with both.
"""

from __future__ import annotations

import torch
from torch import nn


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias (the convolution every ResNet here is made of)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _projection(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    # keys: <name>.0.weight (1x1 conv), <name>.1.* (BN)
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class ResidualBlock(nn.Module):
    """Common part of the residual blocks: the optional projection and the final activation.

    ``act`` is the block's last ReLU as a module; ``<block>.act:input`` is the pre-activation sum
    (RepDistiller's ``preact`` features) and ``<block>.act`` the block output.
    """

    expansion = 1

    def _init_shortcut(self, in_planes: int, planes: int, stride: int, shortcut: str) -> None:
        out_planes = planes * self.expansion
        self._shortcut_name = shortcut
        needs_projection = stride != 1 or in_planes != out_planes
        setattr(self, shortcut, _projection(in_planes, out_planes, stride) if needs_projection else None)
        self.act = nn.ReLU()

    def _finish(self, branch: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        projection = getattr(self, self._shortcut_name)
        identity = x if projection is None else projection(x)
        return self.act(branch + identity)


class BasicBlock(ResidualBlock):
    """Two 3x3 conv-BN layers plus identity/projection, ReLU after the sum (keys conv1, bn1, conv2, bn2)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "downsample") -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self._init_shortcut(in_planes, planes, stride, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        return self._finish(self.bn2(self.conv2(y)), x)


class Bottleneck(ResidualBlock):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4 (keys conv1..3, bn1..3)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "downsample") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU()
        self._init_shortcut(in_planes, planes, stride, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self._finish(self.bn3(self.conv3(y)), x)


def residual_stage(
    block: type[ResidualBlock], in_planes: int, planes: int, count: int, stride: int, shortcut: str
) -> nn.Sequential:
    """`count` blocks; the first one carries the stride (and the projection when shapes change)."""
    blocks = []
    for index in range(count):
        blocks.append(block(in_planes, planes, stride if index == 0 else 1, shortcut))
        in_planes = planes * block.expansion
    return nn.Sequential(*blocks)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet channel shuffle: view channels as (groups, C/groups), transpose, flatten back."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def he_init(model: nn.Module, *, linear_std: float | None = None, zero_linear_bias: bool = False) -> None:
    """The reference initialisation: He-normal (fan-out) convolutions, BN = (1, 0).

    RepDistiller writes it either as ``kaiming_normal_(mode='fan_out')`` or as
    ``normal_(0, sqrt(2 / (k*k*out_channels)))`` — the same distribution. Linear layers keep PyTorch's
    default unless `linear_std` (weights ~ N(0, linear_std), bias 0) or `zero_linear_bias` is given.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(module.weight, 0.0, linear_std)
            if module.bias is not None and (linear_std is not None or zero_linear_bias):
                nn.init.zeros_(module.bias)


def tap_table(stem: str, stages: list[str], pre_logits: str) -> dict[str, str]:
    """{"stem": .., "stage1": .., ..., "pre_logits": ..} from module paths (``"path:input"`` allowed)."""
    taps = {"stem": stem}
    taps.update({f"stage{i}": path for i, path in enumerate(stages, start=1)})
    taps["pre_logits"] = pre_logits
    return taps
