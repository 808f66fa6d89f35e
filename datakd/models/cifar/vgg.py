"""VGG with batch norm and a single linear classifier: vgg8, vgg11, vgg13, vgg16, vgg19.

Same architecture and state-dict keys as the ``vggN_bn`` models of RepDistiller ``models/vgg.py`` /
mdistiller ``mdistiller/models/cifar/vgg.py`` (registered there as ``vgg8`` ... ``vgg19``, which is
how their teacher checkpoints are named): five convolution groups ``block0..4``, each a
``Sequential`` of conv3x3 (with bias) - BN - ReLU repeated, *without* the group's last ReLU (keys
``blockK.<3j>.weight/bias`` for the j-th conv, ``blockK.<3j+1>.*`` for its BN); 2x2 max-pools after
groups 0, 1, 2 (and after group 3 only for 64 px inputs, as in the reference's Tiny-ImageNet path);
global average pooling and ``classifier`` (512 -> classes). Group widths are 64/128/256/512/512;
convolutions per group are 1-1-1-1-1 (vgg8, RepDistiller's "S" configuration), 1-1-2-2-2 (vgg11),
2-2-2-2-2 (vgg13), 2-2-3-3-3 (vgg16) and 2-2-4-4-4 (vgg19): the ImageNet VGG configurations A/B/D/E
with the two hidden fully connected layers removed, keeping their names.

Taps (RepDistiller's feature list in brackets); ``relus.K`` is the ReLU applied to group K's output:

* ``stem`` = ``relus.0``: block0 output after ReLU [f0], 32 px at 32x32 input;
* ``stage1..4`` = ``relus.1..4``: block1..4 outputs after ReLU [f1..f4], 16/8/4/4 px;
* ``pre_logits`` = ``classifier:input``: the pooled 512-d vector [f5].

The pre-ReLU group outputs (RepDistiller's ``preact``) are ``block1`` ... ``block4``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from datakd.models.cifar._blocks import he_init, tap_table
from datakd.models.registry import register_model

TAPS = tap_table("relus.0", ["relus.1", "relus.2", "relus.3", "relus.4"], "classifier:input")

WIDTHS = (64, 128, 256, 512, 512)
CONVS_PER_GROUP = {
    "vgg8": (1, 1, 1, 1, 1),
    "vgg11": (1, 1, 2, 2, 2),
    "vgg13": (2, 2, 2, 2, 2),
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}


def conv_group(in_channels: int, width: int, convs: int) -> nn.Sequential:
    """`convs` x (conv3x3 + BN + ReLU), dropping the trailing ReLU (the model applies it as a tap)."""
    layers: list[nn.Module] = []
    for _ in range(convs):
        layers += [nn.Conv2d(in_channels, width, kernel_size=3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        in_channels = width
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    """Five conv-BN groups with max-pooling between them, global average pooling and one linear layer."""

    def __init__(
        self, convs_per_group: tuple[int, ...], num_classes: int = 100, in_channels: int = 3
    ) -> None:
        super().__init__()
        for index, (width, convs) in enumerate(zip(WIDTHS, convs_per_group)):
            self.add_module(f"block{index}", conv_group(in_channels, width, convs))
            in_channels = width
        for index in range(4):
            self.add_module(f"pool{index}", nn.MaxPool2d(kernel_size=2, stride=2))
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.relus = nn.ModuleList(nn.ReLU() for _ in range(5))
        self.classifier = nn.Linear(WIDTHS[-1], num_classes)
        he_init(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tiny_imagenet = x.shape[2] == 64  # the reference pools once more only for 64 px inputs
        x = self.relus[0](self.block0(x))
        x = self.relus[1](self.block1(self.pool0(x)))
        x = self.relus[2](self.block2(self.pool1(x)))
        x = self.relus[3](self.block3(self.pool2(x)))
        if tiny_imagenet:
            x = self.pool3(x)
        x = self.relus[4](self.block4(x))
        return self.classifier(torch.flatten(self.pool4(x), 1))


def _factory(convs: tuple[int, ...]) -> Callable[..., VGG]:
    def build(num_classes: int = 100, in_channels: int = 3) -> VGG:
        return VGG(convs, num_classes, in_channels)

    return build


for _name, _convs in CONVS_PER_GROUP.items():
    register_model(
        _name,
        taps=TAPS,
        family="cifar",
        description=f"VGG-{_name[3:]} with BN and one linear layer (RepDistiller {_name}_bn keys)",
    )(_factory(_convs))
