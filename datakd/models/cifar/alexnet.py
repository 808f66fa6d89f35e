"""AlexNet for 32x32 inputs as used by role-wise KD (Fu et al. 2020, ``role-kd/pba/kd/nets/ResNet.py``).

Five conv-BN-ReLU layers (11x11x64 "same", 5x5x192, 3x3x384, 3x3x256, 3x3x256; 2x2 max-pools after the
first, second and fifth), two 4096-wide FC-BN-ReLU layers and the classifier. Convolutions and the hidden
FC layers have no bias (BN follows). Pools use ``ceil_mode`` so 28x28 inputs (Fashion-MNIST) also end at
4x4 (TensorFlow's "SAME" pooling).

Taps (role-kd's distillation features): ``stem`` = ``relu1``; ``stage1`` = ``pool2`` (after the second
block), ``stage2`` = ``relu3``, ``stage3`` = ``relu4``, ``stage4`` = ``pool5``; ``pre_logits`` =
``classifier:input``.
"""

from __future__ import annotations

import torch
from torch import nn

from datakd.models.cifar._blocks import he_init
from datakd.models.registry import register_model

TAPS = {
    "stem": "relu1",
    "stage1": "pool2",
    "stage2": "relu3",
    "stage3": "relu4",
    "stage4": "pool5",
    "pre_logits": "classifier:input",
}


class AlexNetCifar(nn.Module):
    """role-kd's AlexNet for CIFAR (about 36M parameters, most in the two 4096-wide FC layers)."""

    def __init__(self, num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        widths = (64, 192, 384, 256, 256)
        kernels = (11, 5, 3, 3, 3)
        previous = in_channels
        for i, (width, kernel) in enumerate(zip(widths, kernels), start=1):
            self.add_module(f"conv{i}", nn.Conv2d(previous, width, kernel, padding=kernel // 2, bias=False))
            self.add_module(f"bn{i}", nn.BatchNorm2d(width))
            self.add_module(f"relu{i}", nn.ReLU())
            previous = width
        self.pool1 = nn.MaxPool2d(2, ceil_mode=True)
        self.pool2 = nn.MaxPool2d(2, ceil_mode=True)
        self.pool5 = nn.MaxPool2d(2, ceil_mode=True)
        self.fc1 = nn.Linear(256 * 4 * 4, 4096, bias=False)
        self.bn_fc1 = nn.BatchNorm1d(4096)
        self.relu_fc1 = nn.ReLU()
        self.fc2 = nn.Linear(4096, 4096, bias=False)
        self.bn_fc2 = nn.BatchNorm1d(4096)
        self.relu_fc2 = nn.ReLU()
        self.classifier = nn.Linear(4096, num_classes)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))
        x = self.relu3(self.bn3(self.conv3(x)))
        x = self.relu4(self.bn4(self.conv4(x)))
        x = self.pool5(self.relu5(self.bn5(self.conv5(x))))
        x = self.relu_fc1(self.bn_fc1(self.fc1(torch.flatten(x, 1))))
        x = self.relu_fc2(self.bn_fc2(self.fc2(x)))
        return self.classifier(x)


@register_model("alexnet_cifar", taps=TAPS, family="cifar")
def alexnet_cifar(num_classes: int = 100, in_channels: int = 3) -> AlexNetCifar:
    """AlexNet for 32x32 inputs (role-wise KD's CIFAR AlexNet, BN after every layer)."""
    return AlexNetCifar(num_classes, in_channels)
