"""MobileNet-V1 (Howard et al. 2017) for ImageNet: mobilenetv1, the student of the ResNet50 -> MobileNet-V1
ImageNet KD benchmark (OFD, CRD follow-ups, ReviewKD, DKD, TST).

State-dict keys follow the implementation those benchmarks share (clovaai overhaul-distillation, re-hosted
as mdistiller ``mdistiller/models/imagenet/mobilenetv1.py``): everything except the classifier sits in one
``Sequential`` named ``model``:

* ``model.0`` = conv3x3 stride 2 (3 -> 32) + BN + ReLU (keys ``model.0.0``, ``model.0.1``);
* ``model.1 .. model.13`` = depthwise-separable units: depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU
  (keys ``model.i.0``, ``.1``, ``.3``, ``.4``), widths 64, 128, 128, 256, 256, 512 x6, 1024, 1024 with
  stride 2 at units 2, 4, 6 and 12;
* ``model.14`` = global average pooling (adaptive here; the reference's 7x7 average pool at 224 px);
* ``fc`` = Linear(1024, classes). 4.23 M parameters for 1000 classes.

Convolutions are He-initialised (fan-out) like torchvision's MobileNets; the reference keeps PyTorch defaults.

Taps (the stage features the mdistiller version returns, after ReLU):

* ``stem`` = ``model.0`` (32 ch, 1/2 resolution);
* ``stage1..4`` = ``model.3``, ``model.5``, ``model.11``, ``model.13`` (128/256/512/1024 ch at 1/4, 1/8,
  1/16, 1/32 resolution: 56/28/14/7 px at 224 px);
* ``pre_logits`` = ``fc:input`` (pooled 1024-d vector).

The pre-ReLU stage features (mdistiller ``preact_feats``, OFD's BN-before-ReLU) are ``model.3.4``,
``model.5.4``, ``model.11.4`` and ``model.13.4``. All ReLUs are non-inplace, so these stay intact.
"""

from __future__ import annotations

import torch
from torch import nn

from datakd.models.registry import register_model

TAPS = {
    "stem": "model.0",
    "stage1": "model.3",
    "stage2": "model.5",
    "stage3": "model.11",
    "stage4": "model.13",
    "pre_logits": "fc:input",
}

# (output width, stride) of the 13 depthwise-separable units after the stem
UNITS = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


def _separable(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False),
        nn.BatchNorm2d(in_channels),
        nn.ReLU(),
        nn.Conv2d(in_channels, out_channels, 1, 1, 0, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class MobileNetV1(nn.Module):
    """Stem conv + 13 depthwise-separable units + global average pooling + ``fc``."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(in_channels, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        ]
        channels = 32
        for width, stride in UNITS:
            layers.append(_separable(channels, width, stride))
            channels = width
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.model = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.model(x), 1))


@register_model("mobilenetv1", taps=TAPS, family="imagenet")
def mobilenetv1(num_classes: int = 1000, in_channels: int = 3) -> MobileNetV1:
    """MobileNet-V1 for ImageNet (4.2M params), keys of the OFD/mdistiller ResNet50->MobileNetV1 benchmark."""
    return MobileNetV1(num_classes, in_channels)
