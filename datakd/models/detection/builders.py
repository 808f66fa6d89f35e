"""torchvision detectors (Faster R-CNN, RetinaNet, FCOS, Mask R-CNN) over any ResNet/ResNeXt + FPN, by name.

Names are ``{detector}_{backbone}_fpn`` with detector in fasterrcnn / retinanet / fcos / maskrcnn and backbone
in r18, r34, r50, r101, r152, x101_32x8d, x101_64x4d (e.g. ``retinanet_r101_fpn``, ``fcos_x101_32x8d_fpn``),
plus small CPU variants for 96x96 test-bed canvases: ``..._fpn_tiny`` (backbone width 0.25, FPN 64 channels)
and ``..._fpn_nano`` (width 0.125, same 64-channel FPN and head, so a nano student can inherit a tiny
teacher's FPN output convs and head with `copy_neck_and_head`). The small variants default to
``min_size = max_size = 96``, anchors for 8-48 px objects and fewer RPN/ROI samples.

Every detector is built from scratch: ``BatchNorm2d`` (not FrozenBatchNorm2d) and every layer trainable; no
weights are ever downloaded. ``num_classes`` is the number of object categories K; torchvision gets K + 1 with
index 0 the background, so dataset labels 1..K index the logits directly. State-dict keys are
torchvision's, so ``checkpoint=PATH`` loads torchvision's own detection state-dict files (or our
checkpoints) from disk.

Why not torchvision's builders: they fix the FPN at 256 channels, the stage widths at 64..512, and freeze BN
when weights are given; here the FPN width, backbone width, anchors and transform sizes are options.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

from datakd.errors import ConfigError, choice_error
from datakd.models.detection.backbone import BACKBONES, build_trunk, load_state_file
from datakd.models.registry import register_model

if TYPE_CHECKING:
    from torchvision.models.detection.anchor_utils import AnchorGenerator

DETECTORS = ("fasterrcnn", "retinanet", "fcos", "maskrcnn")
TWO_STAGE = ("fasterrcnn", "maskrcnn")
# Backbone stages as named taps (module outputs of the trunk inside the FPN wrapper).
DETECTION_TAPS = {f"stage{i}": f"backbone.body.layer{i}" for i in range(1, 5)}
# torchvision's base anchor sizes per FPN level; "small" divides them by 4 (8..128 px: objects of 8-48 px
# match P2/P3-P5 anchors at IoU >= 0.5). FCOS's "anchors" are its level strides and never change.
DEFAULT_ANCHORS = (32, 64, 128, 256, 512)
SMALL_ANCHORS = (8, 16, 32, 64, 128)
# Constructor arguments the builder sets itself; every other torchvision constructor argument is an option.
_OWN = {
    "self",
    "backbone",
    "num_classes",
    "min_size",
    "max_size",
    "image_mean",
    "image_std",
    "kwargs",
    "rpn_anchor_generator",
    "anchor_generator",
    "rpn_head",
    "head",
    "box_roi_pool",
    "box_head",
    "box_predictor",
    "mask_roi_pool",
    "mask_head",
    "mask_predictor",
}
_TRANSFORM_OPTIONS = {"size_divisible", "fixed_size"}


@dataclass(frozen=True)
class Preset:
    """Defaults of one registered variant (every one can be overridden by a keyword argument)."""

    width: float = 1.0
    fpn_channels: int = 256
    min_size: int = 800
    max_size: int = 1333
    anchor_sizes: str = "default"
    representation_size: int = 1024
    options: dict[str, Any] = field(default_factory=dict)
    label: str = ""


_SMALL_RCNN = {
    "rpn_pre_nms_top_n_train": 600,
    "rpn_post_nms_top_n_train": 300,
    "rpn_pre_nms_top_n_test": 300,
    "rpn_post_nms_top_n_test": 150,
    "rpn_batch_size_per_image": 128,
    "box_batch_size_per_image": 128,
}
PRESETS: dict[str, Preset] = {
    "": Preset(),
    "_tiny": Preset(0.25, 64, 96, 96, "small", 256, _SMALL_RCNN, "width 0.25, FPN 64, 96 px"),
    "_nano": Preset(0.125, 64, 96, 96, "small", 256, _SMALL_RCNN, "width 0.125, FPN 64, 96 px (student)"),
}
# Small variants exist for these backbones (x101_64x4d has no channel per group at width 0.125).
SMALL_BACKBONES = {"_tiny": tuple(BACKBONES), "_nano": ("r18", "r34", "r50", "r101")}


def detector_constructor(detector: str) -> Any:
    """The torchvision detector class behind `detector`."""
    from torchvision.models import detection

    classes = {
        "fasterrcnn": detection.FasterRCNN,
        "retinanet": detection.RetinaNet,
        "fcos": detection.FCOS,
        "maskrcnn": detection.MaskRCNN,
    }
    return classes[detector]


def accepted_options(detector: str) -> set[str]:
    """torchvision constructor/transform arguments `options` may set for `detector`."""
    params = inspect.signature(detector_constructor(detector).__init__).parameters
    return (set(params) - _OWN) | _TRANSFORM_OPTIONS


def _anchor_bases(anchor_sizes: str | Sequence[int]) -> tuple[int, ...]:
    if isinstance(anchor_sizes, str):
        table = {"default": DEFAULT_ANCHORS, "small": SMALL_ANCHORS}
        if anchor_sizes not in table:
            raise choice_error("anchor_sizes", anchor_sizes, table, ConfigError)
        return table[anchor_sizes]
    bases = tuple(int(size) for size in anchor_sizes)
    if len(bases) != 5 or min(bases) <= 0:
        raise ConfigError(
            f"anchor_sizes must be 5 positive base sizes (one per FPN level), got {anchor_sizes!r}"
        )
    return bases


def anchor_generator(detector: str, anchor_sizes: str | Sequence[int]) -> AnchorGenerator | None:
    """The anchor generator for `detector`, or None for FCOS (its anchors are its level strides)."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    bases = _anchor_bases(anchor_sizes)
    ratios = ((0.5, 1.0, 2.0),) * 5
    if detector == "fcos":
        return None
    if detector == "retinanet":  # three octave scales per level, as torchvision's default
        sizes = tuple((x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))) for x in bases)
        return AnchorGenerator(sizes, ratios)
    return AnchorGenerator(tuple((x,) for x in bases), ratios)


def _fpn_backbone(detector: str, backbone: str, width: float, fpn_channels: int) -> nn.Module:
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

    if fpn_channels < 1:
        raise ConfigError(f"fpn_channels must be positive, got {fpn_channels}")
    if detector == "fcos" and fpn_channels % 16:
        raise ConfigError(
            f"FCOS's head uses GroupNorm(16): fpn_channels must be a multiple of 16, got {fpn_channels}"
        )
    trunk = build_trunk(backbone, width)
    # R-CNNs read C2-C5 (+ max-pooled "pool"); one-stage detectors C3-C5 + P6/P7 (torchvision's builders).
    returned = [1, 2, 3, 4] if detector in TWO_STAGE else [2, 3, 4]
    extra = LastLevelMaxPool() if detector in TWO_STAGE else LastLevelP6P7(fpn_channels, fpn_channels)
    return BackboneWithFPN(
        trunk,
        return_layers={f"layer{k}": str(v) for v, k in enumerate(returned)},
        in_channels_list=[trunk.stage_channels[k - 1] for k in returned],
        out_channels=fpn_channels,
        extra_blocks=extra,
    )


def _rcnn_parts(detector: str, fpn_channels: int, representation_size: int, classes: int) -> dict[str, Any]:
    """Box (and mask) heads sized for `fpn_channels`: torchvision's defaults hard-code 256 and 1024."""
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    parts: dict[str, Any] = {
        "box_head": TwoMLPHead(fpn_channels * 7 * 7, representation_size),
        "box_predictor": FastRCNNPredictor(representation_size, classes),
    }
    if detector == "maskrcnn":
        parts["mask_head"] = MaskRCNNHeads(fpn_channels, (fpn_channels,) * 4, 1)
        parts["mask_predictor"] = MaskRCNNPredictor(fpn_channels, fpn_channels, classes)
    return parts


def build_detector(
    detector: str,
    backbone: str,
    num_classes: int,
    *,
    width: float = 1.0,
    fpn_channels: int = 256,
    min_size: int = 800,
    max_size: int = 1333,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    anchor_sizes: str | Sequence[int] = "default",
    representation_size: int = 1024,
    options: dict[str, Any] | None = None,
    checkpoint: str | None = None,
    checkpoint_strict: bool = True,
) -> nn.Module:
    """Detector `detector` over `backbone` + FPN for K = `num_classes` categories (K + 1 logits)."""
    if detector not in DETECTORS:
        raise choice_error("detector", detector, DETECTORS, ConfigError)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(
            f"num_classes (object categories, background excluded) must be >= 1, got {num_classes}"
        )
    options = dict(options or {})
    allowed = accepted_options(detector)
    for key in options:
        if key not in allowed:
            raise choice_error(f"option of {detector} (options.*):", key, allowed, ConfigError)
    for name, value in (("image_mean", image_mean), ("image_std", image_std)):
        if value is not None and len(value) != 3:
            raise ConfigError(f"{name} must have 3 values (RGB), got {value!r}")
    body = _fpn_backbone(detector, backbone, width, fpn_channels)
    arguments: dict[str, Any] = {
        "min_size": min_size,
        "max_size": max_size,
        "image_mean": list(image_mean) if image_mean is not None else [0.485, 0.456, 0.406],
        "image_std": list(image_std) if image_std is not None else [0.229, 0.224, 0.225],
    }
    generator = anchor_generator(detector, anchor_sizes)
    classes = num_classes + 1
    if detector in TWO_STAGE:
        from torchvision.models.detection.rpn import RPNHead

        assert generator is not None
        arguments["rpn_anchor_generator"] = generator
        arguments["rpn_head"] = RPNHead(fpn_channels, generator.num_anchors_per_location()[0])
        arguments.update(_rcnn_parts(detector, fpn_channels, representation_size, classes))
        classes_argument = None  # torchvision insists on None when the predictors are given
    else:
        if generator is not None:
            arguments["anchor_generator"] = generator
        classes_argument = classes
    try:
        model = detector_constructor(detector)(body, classes_argument, **arguments, **options)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{detector}_{backbone}_fpn rejected its options: {error}") from None
    if checkpoint:
        load_state_file(model, checkpoint, checkpoint_strict)
    return model


def _factory(detector: str, backbone: str, preset: Preset) -> Callable[..., nn.Module]:
    """A registry factory with this variant's defaults; R-CNNs also take `representation_size`."""
    rcnn_options = preset.options if detector in TWO_STAGE else {}

    def make(num_classes: int, options: dict[str, Any] | None, **kwargs: Any) -> nn.Module:
        return build_detector(
            detector, backbone, num_classes, options=rcnn_options | dict(options or {}), **kwargs
        )

    if detector in TWO_STAGE:

        def build_rcnn(
            num_classes: int,
            width: float = preset.width,
            fpn_channels: int = preset.fpn_channels,
            min_size: int = preset.min_size,
            max_size: int = preset.max_size,
            image_mean: Sequence[float] | None = None,
            image_std: Sequence[float] | None = None,
            anchor_sizes: str | Sequence[int] = preset.anchor_sizes,
            representation_size: int = preset.representation_size,
            options: dict[str, Any] | None = None,
            checkpoint: str | None = None,
            checkpoint_strict: bool = True,
        ) -> nn.Module:
            return make(
                num_classes,
                options,
                width=width,
                fpn_channels=fpn_channels,
                min_size=min_size,
                max_size=max_size,
                image_mean=image_mean,
                image_std=image_std,
                anchor_sizes=anchor_sizes,
                representation_size=representation_size,
                checkpoint=checkpoint,
                checkpoint_strict=checkpoint_strict,
            )

        return build_rcnn

    def build_one_stage(
        num_classes: int,
        width: float = preset.width,
        fpn_channels: int = preset.fpn_channels,
        min_size: int = preset.min_size,
        max_size: int = preset.max_size,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        anchor_sizes: str | Sequence[int] = preset.anchor_sizes,
        options: dict[str, Any] | None = None,
        checkpoint: str | None = None,
        checkpoint_strict: bool = True,
    ) -> nn.Module:
        return make(
            num_classes,
            options,
            width=width,
            fpn_channels=fpn_channels,
            min_size=min_size,
            max_size=max_size,
            image_mean=image_mean,
            image_std=image_std,
            anchor_sizes=anchor_sizes,
            checkpoint=checkpoint,
            checkpoint_strict=checkpoint_strict,
        )

    return build_one_stage


def _register_all() -> None:
    for detector in DETECTORS:
        for suffix, preset in PRESETS.items():
            for backbone in SMALL_BACKBONES.get(suffix, tuple(BACKBONES)):
                name = f"{detector}_{backbone}_fpn{suffix}"
                label = f", {preset.label}" if preset.label else ""
                description = f"torchvision {detector} {backbone}+FPN from scratch (K+1 logits{label})"
                register_model(name, DETECTION_TAPS, "detection", description)(
                    _factory(detector, backbone, preset)
                )


_register_all()
