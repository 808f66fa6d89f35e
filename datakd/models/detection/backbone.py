"""ResNet / ResNeXt trunks for detectors and segmenters, with a width multiplier and optional dilation.

torchvision's ResNet fixes the stage widths at 64/128/256/512 and its BasicBlock refuses dilation, so small
test-bed detectors and a dilated ResNet-18 (PSPNet-R18) need their own trunk. Module and parameter names are
torchvision's (``conv1``, ``bn1``, ``layer1..4``, blocks with ``conv1/bn1/.../downsample.0/1``), so at width 1
a trunk loads torchvision's ResNet weights and detection/segmentation state dicts key for key, and
``IntermediateLayerGetter`` / ``BackboneWithFPN`` wrap it unchanged. There is no ``avgpool``/``fc``: dense
models never use them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from datakd.errors import ConfigError, DatakdError, choice_error

NormLayer = Callable[[int], nn.Module]


@dataclass(frozen=True)
class TrunkSpec:
    """Depth and block type of a ResNet / ResNeXt (torchvision's definitions)."""

    block: str  # "basic" | "bottleneck"
    layers: tuple[int, int, int, int]
    groups: int = 1
    width_per_group: int = 64


BACKBONES: dict[str, TrunkSpec] = {
    "r18": TrunkSpec("basic", (2, 2, 2, 2)),
    "r34": TrunkSpec("basic", (3, 4, 6, 3)),
    "r50": TrunkSpec("bottleneck", (3, 4, 6, 3)),
    "r101": TrunkSpec("bottleneck", (3, 4, 23, 3)),
    "r152": TrunkSpec("bottleneck", (3, 8, 36, 3)),
    "x101_32x8d": TrunkSpec("bottleneck", (3, 4, 23, 3), groups=32, width_per_group=8),
    "x101_64x4d": TrunkSpec("bottleneck", (3, 4, 23, 3), groups=64, width_per_group=4),
}


def _conv3x3(inplanes: int, planes: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(
        inplanes, planes, 3, stride=stride, padding=dilation, groups=groups, dilation=dilation, bias=False
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; unlike torchvision's, it accepts dilation (dilated ResNet-18/34)."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int,
        downsample: nn.Module | None,
        norm_layer: NormLayer,
        dilation: int = 1,
        groups: int = 1,
        width_per_group: int = 64,
    ) -> None:
        super().__init__()
        if groups != 1 or width_per_group != 64:
            raise ConfigError(
                "ResNet basic blocks have no groups / width_per_group (ResNeXt uses bottlenecks)"
            )
        self.conv1 = _conv3x3(inplanes, planes, stride, dilation=dilation)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, dilation=dilation)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (grouped, strided, dilated) -> 1x1 with a residual: torchvision's ResNet v1.5 layout."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int,
        downsample: nn.Module | None,
        norm_layer: NormLayer,
        dilation: int = 1,
        groups: int = 1,
        width_per_group: int = 64,
    ) -> None:
        super().__init__()
        inner = int(planes * (width_per_group / 64.0)) * groups
        if inner < groups or inner == 0:
            raise ConfigError(
                f"ResNeXt stage of {planes} planes with {groups} groups x {width_per_group} is too narrow "
                "(a group would have no channel); use a larger width"
            )
        self.conv1 = nn.Conv2d(inplanes, inner, 1, bias=False)
        self.bn1 = norm_layer(inner)
        self.conv2 = _conv3x3(inner, inner, stride, groups, dilation)
        self.bn2 = norm_layer(inner)
        self.conv3 = nn.Conv2d(inner, planes * self.expansion, 1, bias=False)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetTrunk(nn.Module):
    """A ResNet without pooling head; ``stage_channels[i]`` is ``layer{i+1}``'s output width.

    `dilate` turns the stride of layer2/3/4 into dilation (torchvision's ``replace_stride_with_dilation``):
    ``(False, True, True)`` gives output stride 8 for segmentation.
    """

    def __init__(
        self,
        spec: TrunkSpec,
        width: float = 1.0,
        dilate: tuple[bool, bool, bool] = (False, False, False),
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if not 0 < width <= 4:
            raise ConfigError(f"backbone width must be in (0, 4], got {width}")
        block = BasicBlock if spec.block == "basic" else Bottleneck
        base = max(1, round(64 * width))
        self.spec = spec
        self.inplanes = base
        self.dilation = 1
        self.conv1 = nn.Conv2d(3, base, 7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(base)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.stage_channels: list[int] = []
        strides = (1, 2, 2, 2)
        dilated = (False, *dilate)
        for index, (blocks, stride, dilation_here) in enumerate(zip(spec.layers, strides, dilated), 1):
            layer = self._make_layer(
                block, base * 2 ** (index - 1), blocks, stride, dilation_here, norm_layer
            )
            setattr(self, f"layer{index}", layer)
            self.stage_channels.append(self.inplanes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _make_layer(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        planes: int,
        blocks: int,
        stride: int,
        dilate: bool,
        norm_layer: NormLayer,
    ) -> nn.Sequential:
        previous = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        out = planes * block.expansion
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out, 1, stride=stride, bias=False), norm_layer(out)
            )
        extra = {"groups": self.spec.groups, "width_per_group": self.spec.width_per_group}
        layers = [block(self.inplanes, planes, stride, downsample, norm_layer, previous, **extra)]
        self.inplanes = out
        layers += [
            block(self.inplanes, planes, 1, None, norm_layer, self.dilation, **extra)
            for _ in range(1, blocks)
        ]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def build_trunk(
    backbone: str, width: float = 1.0, dilate: tuple[bool, bool, bool] = (False, False, False)
) -> ResNetTrunk:
    """Trunk `backbone` (a key of `BACKBONES`) with BatchNorm2d everywhere, all layers trainable."""
    if backbone not in BACKBONES:
        raise choice_error("backbone", backbone, BACKBONES, ConfigError)
    return ResNetTrunk(BACKBONES[backbone], width=width, dilate=dilate)


def load_state_file(model: nn.Module, checkpoint: str, strict: bool = True) -> None:
    """Load a local state-dict file (torchvision's or ours); a one-line error when it does not fit."""
    from datakd.models.checkpoint_io import load_weights

    try:
        report = load_weights(model, checkpoint, strict=strict)
    except DatakdError as error:
        hint = " (checkpoint_strict=false loads only the tensors that fit)" if strict else ""
        raise DatakdError(f"{error}{hint}") from None
    skipped = set(report.missing) | {key for key, _, _ in report.mismatched}
    if not any(key not in skipped for key in model.state_dict() if not key.endswith("num_batches_tracked")):
        raise DatakdError(f"checkpoint {checkpoint!r}: no tensor of it fits the model")
