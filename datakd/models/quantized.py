"""DoReFa-quantised CIFAR zoo models by name: ``NAME@wKaK`` (e.g. ``resnet18@w4a4``), Zhou et al. 2016.

Role-wise KD distils full-precision teachers into low-bit copies of themselves, so the quantised model keeps
the full-precision model's state-dict keys (quantisation is a forward-time function of the same weights) and
``student.init_from_teacher: true`` copies every teacher tensor into it.

* ``Q_k(r) = round((2^k − 1)·r) / (2^k − 1)`` with a straight-through gradient for the rounding.
* Weights of every convolution and linear layer except the first convolution and the last linear layer:
  ``w_q = 2·Q_k(tanh(w) / (2·max|tanh(w)|) + ½) − 1`` (max over the layer's whole tensor; gradients flow
  through tanh and the normalisation, the rounding is straight-through).
* Activations (``a < 32``): ``Q_k(clip(x, 0, 1))``, placed as in role-kd's ResNet18 for the zoo's residual
  blocks: on every residual block's input (so the identity path adds the quantised input) and instead of the
  ReLU after each block's inner conv-BN layers; the block outputs (the ``stageK`` taps) and the stem stay
  ReLU. In models without those residual blocks (VGG, WRN, MobileNetV2, ShuffleNets, AlexNet) every ReLU
  module except the last one in the model (the one feeding the classifier) becomes ``Q_k(clip(x, 0, 1))``,
  which is role-kd's AlexNet placement.
* Bits: 2..8 or 32 (= full precision for that part; ``a32`` keeps the ReLUs). Gradients are not quantised.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from datakd.errors import ConfigError, DatakdError
from datakd.models.cifar._blocks import ResidualBlock
from datakd.models.registry import ModelEntry, add_resolver, get_entry
from datakd.registry import check_kwargs

PATTERN = re.compile(r"^(?P<base>.+)@w(?P<w>\d+)a(?P<a>\d+)$")
VALID_BITS = (2, 3, 4, 5, 6, 7, 8, 32)
FULL = 32


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity gradient (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def quantize_unit(x: torch.Tensor, bits: int) -> torch.Tensor:
    """DoReFa's Q_k on [0, 1]: the nearest of the 2^k levels i/(2^k − 1), straight-through."""
    levels = float(2**bits - 1)
    return round_ste(x * levels) / levels


def quantize_weight(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """DoReFa weights: 2·Q_k(tanh(w) / (2·max|tanh(w)|) + ½) − 1, in [−1, 1] on 2^k levels."""
    if bits >= FULL:
        return weight
    t = torch.tanh(weight)
    return 2.0 * quantize_unit(t / (2.0 * t.abs().max()) + 0.5, bits) - 1.0


def quantize_activation(x: torch.Tensor, bits: int) -> torch.Tensor:
    """DoReFa activations: Q_k(clip(x, 0, 1)) (clip passes gradient only inside [0, 1])."""
    return quantize_unit(torch.clamp(x, 0.0, 1.0), bits)


class QuantAct(nn.Module):
    """Replaces a ReLU: clip to [0, 1], then quantise to `bits` bits."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quantize_activation(x, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class QuantConv2d(nn.Conv2d):
    """A Conv2d that convolves with its DoReFa-quantised weight (same parameters, same state-dict keys)."""

    weight_bits: int = FULL

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, quantize_weight(self.weight, self.weight_bits), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weight_bits={self.weight_bits}"


class QuantLinear(nn.Linear):
    """A Linear layer applied with its DoReFa-quantised weight (same parameters and keys)."""

    weight_bits: int = FULL

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, quantize_weight(self.weight, self.weight_bits), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weight_bits={self.weight_bits}"


class QuantizeInput:
    """Forward pre-hook quantising a residual block's input (kept as a class so models stay picklable)."""

    def __init__(self, bits: int) -> None:
        self.bits = bits

    def __call__(self, _module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (quantize_activation(args[0], self.bits), *args[1:])


def _quantized_copy(layer: nn.Module, bits: int) -> nn.Module:
    """A QuantConv2d/QuantLinear holding `layer`'s own parameters (so keys and tensors are identical)."""
    if isinstance(layer, nn.Conv2d):
        clone: nn.Module = QuantConv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,  # type: ignore[arg-type]
            layer.stride,  # type: ignore[arg-type]
            layer.padding,  # type: ignore[arg-type]
            layer.dilation,  # type: ignore[arg-type]
            layer.groups,
            layer.bias is not None,
            layer.padding_mode,
            device="meta",
        )
    else:
        clone = QuantLinear(layer.in_features, layer.out_features, layer.bias is not None, device="meta")
    clone.weight = layer.weight
    if layer.bias is not None:
        clone.bias = layer.bias
    clone.weight_bits = bits
    clone.train(layer.training)
    return clone


def _replace(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, attribute = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, attribute, module)


def quantize_model(model: nn.Module, weight_bits: int, act_bits: int) -> nn.Module:
    """Make `model` (a CIFAR zoo network) a DoReFa W`weight_bits`/A`act_bits` network in place."""
    named = list(model.named_modules())
    convs = [n for n, m in named if isinstance(m, nn.Conv2d)]
    linears = [n for n, m in named if isinstance(m, nn.Linear)]
    if not convs or not linears:
        raise DatakdError(
            f"DoReFa needs a first convolution and a last linear layer; {type(model).__name__} lacks one"
        )
    full_precision = {convs[0], linears[-1]}
    if weight_bits < FULL:
        for path in convs + linears:
            if path not in full_precision:
                _replace(model, path, _quantized_copy(model.get_submodule(path), weight_bits))
    if act_bits < FULL:
        blocks = [(n, m) for n, m in named if isinstance(m, ResidualBlock)]
        if blocks:
            for _path, block in blocks:
                block.register_forward_pre_hook(QuantizeInput(act_bits))
                for child_name, child in list(block.named_children()):
                    if isinstance(child, nn.ReLU) and child_name != "act":
                        setattr(block, child_name, QuantAct(act_bits))
        else:
            relus = [n for n, m in named if isinstance(m, nn.ReLU)]
            for path in relus[:-1]:
                _replace(model, path, QuantAct(act_bits))
    model.datakd_quantization = {"weight_bits": weight_bits, "act_bits": act_bits}  # type: ignore[assignment]
    return model


def _bits(value: str, what: str, name: str) -> int:
    bits = int(value)
    if bits not in VALID_BITS:
        valid = ", ".join(str(b) for b in VALID_BITS)
        raise ConfigError(f"model {name!r}: {what} bits must be one of {valid}, got {bits}")
    return bits


def resolve_quantized(name: str) -> ModelEntry | None:
    """``NAME@wKaK``: zoo model NAME with DoReFa K-bit weights and activations."""
    match = PATTERN.match(name)
    if match is None:
        return None
    base = get_entry(match["base"])
    if base.family != "cifar":
        raise DatakdError(
            f"model {name!r}: DoReFa quantisation is implemented for the CIFAR zoo; "
            f"{match['base']!r} is a {base.family} model"
        )
    weight_bits = _bits(match["w"], "weight", name)
    act_bits = _bits(match["a"], "activation", name)

    def build(num_classes: int = 100, **kwargs: Any) -> nn.Module:
        check_kwargs(f"model {name!r}", base.factory, kwargs, reserved=("num_classes",))
        return quantize_model(base.factory(num_classes=num_classes, **kwargs), weight_bits, act_bits)

    description = f"{base.name} with DoReFa {weight_bits}-bit weights, {act_bits}-bit activations"
    return ModelEntry(name, build, dict(base.taps), base.family, description)


add_resolver(
    resolve_quantized,
    [
        (
            "NAME@wKaK",
            "a CIFAR zoo model with DoReFa K-bit weights/activations (K = 2..8, 32 = full precision), "
            "e.g. resnet18@w4a4; first conv and last linear stay full precision, keys as NAME",
        )
    ],
)
