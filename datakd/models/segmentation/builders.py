"""Semantic segmentation networks by name: PSPNet, FCN and DeepLabV3 over dilated ResNets.

Names are ``{arch}_{backbone}`` with arch in pspnet / fcn / deeplabv3 and backbone in r18, r34, r50, r101,
r152 (e.g. ``pspnet_r101``, ``pspnet_r18`` for TST's Cityscapes pair), plus ``{arch}_{r18,r34,r50}_tiny``
(width 0.25) and ``{arch}_r18_nano`` (width 0.125) for 96x96 CPU canvases. ``num_classes`` is the number of
classes K. Every model maps a normalised N x 3 x H x W batch to
``{"out": N x K x H x W, "aux": N x K x H x W}`` (logits at input resolution, bilinear upsampling; ``aux``
is the FCN head on layer3, absent with ``aux_loss=False``), torchvision's segmentation output convention.

Why a trunk of our own: torchvision has no PSPNet and its BasicBlock refuses dilation, so ResNet-18/34 cannot
reach output stride 8 there. FCN / DeepLabV3 use torchvision's own classes and heads on the same trunk, so at
width 1 their state dicts are torchvision's ``fcn_resnet50`` / ``deeplabv3_resnet50`` key for key and
``checkpoint=PATH`` loads those files. PSPNet follows mmsegmentation's PSPHead (pyramid pooling with bins
1, 2, 3, 6 at in/4 channels each, 3x3 bottleneck to in/4, dropout 0.1, 1x1 classifier) on a stem-conv ResNet
(mmseg's ResNetV1c deep stem is not reproduced [ours]). BatchNorm2d everywhere; the pyramid's 1x1 pooled
branches need a training batch of at least 2.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from datakd.errors import ConfigError, choice_error
from datakd.models.detection.backbone import build_trunk, load_state_file
from datakd.models.registry import register_model

ARCHS = ("pspnet", "fcn", "deeplabv3")
SEG_BACKBONES = ("r18", "r34", "r50", "r101", "r152")
SMALL = {"_tiny": (0.25, ("r18", "r34", "r50")), "_nano": (0.125, ("r18",))}
DILATION = {8: (False, True, True), 16: (False, False, True), 32: (False, False, False)}
# Input of each architecture's final 1x1 classifier conv (the decode head's feature map).
_LAST_CONV = {"pspnet": "classifier.5", "fcn": "classifier.4", "deeplabv3": "classifier.4"}


def segmentation_taps(arch: str) -> dict[str, str]:
    """Named taps: backbone stages, the decode head (its low-resolution logits and features), the aux head."""
    taps = {f"stage{i}": f"backbone.layer{i}" for i in range(1, 5)}
    taps["decode_features"] = f"{_LAST_CONV[arch]}:input"
    taps["decode_head"] = "classifier"
    taps["aux_head"] = "aux_classifier"
    return taps


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling module: pooled context at several grid sizes, upsampled and concatenated."""

    def __init__(self, in_channels: int, channels: int, bins: Sequence[int]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(size),
                nn.Conv2d(in_channels, channels, 1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            )
            for size in bins
        )

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        pooled = [
            F.interpolate(stage(x), size=size, mode="bilinear", align_corners=False) for stage in self.stages
        ]
        return torch.cat([x, *pooled], dim=1)


class PSPHead(nn.Sequential):
    """Pyramid pooling, 3x3 bottleneck, dropout, 1x1 classifier (``classifier.5``)."""

    def __init__(self, in_channels: int, num_classes: int, channels: int, bins: Sequence[int] = (1, 2, 3, 6)):
        super().__init__(
            PyramidPooling(in_channels, channels, bins),
            nn.Conv2d(in_channels + len(bins) * channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Dropout2d(0.1),
            nn.Conv2d(channels, num_classes, 1),
        )


class PSPNet(nn.Module):
    """Backbone (layer4 -> "out", layer3 -> "aux"), PSP decode head, optional FCN auxiliary head."""

    def __init__(self, backbone: nn.Module, classifier: nn.Module, aux_classifier: nn.Module | None) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.aux_classifier = aux_classifier

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        size = x.shape[-2:]
        features = self.backbone(x)
        result = OrderedDict()
        result["out"] = F.interpolate(
            self.classifier(features["out"]), size, mode="bilinear", align_corners=False
        )
        if self.aux_classifier is not None:
            aux = self.aux_classifier(features["aux"])
            result["aux"] = F.interpolate(aux, size, mode="bilinear", align_corners=False)
        return result


def build_segmenter(
    arch: str,
    backbone: str,
    num_classes: int,
    *,
    width: float = 1.0,
    output_stride: int = 8,
    aux_loss: bool = True,
    channels: int | None = None,
    checkpoint: str | None = None,
    checkpoint_strict: bool = True,
) -> nn.Module:
    """`arch` over a dilated `backbone` for `num_classes` classes.

    `channels` is the decode head's width: PSPNet's default is in/4 (mmseg: 512 on ResNet-50, 128 on
    ResNet-18), DeepLabV3's ASPP default is 256 x width (torchvision's 256 at width 1); FCN's head is in/4.
    """
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.segmentation import FCN, DeepLabV3
    from torchvision.models.segmentation.deeplabv3 import ASPP
    from torchvision.models.segmentation.fcn import FCNHead

    if arch not in ARCHS:
        raise choice_error("segmentation architecture", arch, ARCHS, ConfigError)
    if output_stride not in DILATION:
        raise choice_error("output_stride", output_stride, map(str, DILATION), ConfigError)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    trunk = build_trunk(backbone, width, DILATION[output_stride])
    out_channels, aux_channels = trunk.stage_channels[3], trunk.stage_channels[2]
    layers = {"layer4": "out", "layer3": "aux"} if aux_loss else {"layer4": "out"}
    body = IntermediateLayerGetter(trunk, return_layers=layers)
    aux = FCNHead(aux_channels, num_classes) if aux_loss else None
    if arch == "pspnet":
        head: nn.Module = PSPHead(out_channels, num_classes, channels or max(1, out_channels // 4))
        model: nn.Module = PSPNet(body, head, aux)
    elif arch == "fcn":
        if channels is not None:
            raise ConfigError(
                "fcn's head width is fixed at in_channels / 4 (torchvision's FCNHead); drop channels"
            )
        model = FCN(body, FCNHead(out_channels, num_classes), aux)
    else:
        width_channels = channels or max(8, round(256 * width))
        head = nn.Sequential(
            ASPP(out_channels, (12, 24, 36), width_channels),
            nn.Conv2d(width_channels, width_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(width_channels),
            nn.ReLU(),
            nn.Conv2d(width_channels, num_classes, 1),
        )  # torchvision's DeepLabHead with a variable width (its own fixes 256)
        model = DeepLabV3(body, head, aux)
    if checkpoint:
        load_state_file(model, checkpoint, checkpoint_strict)
    return model


def _factory(arch: str, backbone: str, default_width: float) -> Callable[..., nn.Module]:
    def build(
        num_classes: int,
        width: float = default_width,
        output_stride: int = 8,
        aux_loss: bool = True,
        channels: int | None = None,
        checkpoint: str | None = None,
        checkpoint_strict: bool = True,
    ) -> nn.Module:
        return build_segmenter(
            arch,
            backbone,
            num_classes,
            width=width,
            output_stride=output_stride,
            aux_loss=aux_loss,
            channels=channels,
            checkpoint=checkpoint,
            checkpoint_strict=checkpoint_strict,
        )

    return build


def _register_all() -> None:
    for arch in ARCHS:
        taps = segmentation_taps(arch)
        variants = [("", 1.0, SEG_BACKBONES)] + [(suffix, w, bbs) for suffix, (w, bbs) in SMALL.items()]
        for suffix, width, backbones in variants:
            for backbone in backbones:
                note = f", width {width}" if suffix else ""
                description = f"{arch} on dilated {backbone} (output stride 8, aux head{note})"
                register_model(f"{arch}_{backbone}{suffix}", taps, "segmentation", description)(
                    _factory(arch, backbone, width)
                )


_register_all()
