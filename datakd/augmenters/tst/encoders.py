"""TST meta-encoders (spec §1.4): tiny networks that imitate one hand-made op as a function of a magnitude.

`SpatialEncoder` (f_STN, 55 parameters) regresses a 2×3 affine matrix from a learned code and the magnitude
and warps the image with it; `ColorEncoder` (f_CN, 281 parameters at 3 channels) regresses one scale and one
shift per sample, applies them to the non-padding pixels and mixes the result with a 5×5 convolution.
Both work on normalised tensors. A warp fills the pixels it uncovers with `SpatialEncoder.fill`: the
normalised value of a black pixel, which is how Stage I's hand-made targets (uint8 ops, fill 0) fill them.
(The authors' code pads the normalised tensor with 0, i.e. the mean colour, against black targets: then even
the exact affine of a translation cannot reach its target. Encoders files of version 1 were fitted that
way and keep that fill when loaded; `set_fill`.) In "random mode" (Stage II/III) each sample also passes a
relaxed-Bernoulli gate with its own logit (initialised at 0 and never trained, so it opens with
probability 0.5): this is the per-sample randomness of f_DE in the authors' code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from datakd.augmenters.tst.ops import AFFINE_OPS, COLOR_OPS, MAGNITUDE_OPS
from datakd.data.loaders import Normalizer
from datakd.errors import ConfigError, choice_error

GATE_TEMPERATURE = 0.05
CODE_NOISE = 0.01
_EPS = 1e-6


def relaxed_bernoulli(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """σ((logits + L)/τ) with L ~ Logistic(0, 1): a differentiable, near-binary sample for small τ.

    P(sample > 0.5) = σ(logits). Draws from the global RNG of `logits`' device (checkpointed).
    """
    u = torch.rand(logits.shape, device=logits.device, dtype=logits.dtype).clamp(_EPS, 1.0 - _EPS)
    noise = torch.log(u) - torch.log1p(-u)
    return torch.sigmoid((logits + noise) / temperature)


def _magnitudes(m: torch.Tensor | float, batch: int, device: torch.device) -> torch.Tensor:
    """A per-sample magnitude column (B×1) from a scalar or a (B,)/(B,1) tensor."""
    m = torch.as_tensor(m, dtype=torch.float32, device=device)
    return m.reshape(-1, 1).expand(batch, 1) if m.numel() == 1 else m.reshape(batch, 1)


class SpatialEncoder(nn.Module):
    """f_STN: A = Linear([H, m] + ε) as a 2×3 affine matrix (identity at init), then a bilinear warp.

    Uncovered pixels take `fill` (per channel, normalised; 0 until `set_fill`). It is a non-persistent
    buffer: the encoders file stores which fill its fit used, so the 55 fitted parameters load unchanged.
    """

    def __init__(self) -> None:
        super().__init__()
        self.code = nn.Parameter(torch.randn(6))  # θ_E (the paper's H)
        self.fc = nn.Linear(7, 6)
        nn.init.zeros_(self.fc.weight)
        with torch.no_grad():
            self.fc.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))
        self.gate_logit = nn.Parameter(torch.zeros(1))
        self.register_buffer("identity", torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).view(1, 2, 3))
        self.register_buffer("fill", torch.zeros(1, 1, 1, 1), persistent=False)  # any channels

    def set_fill(self, fill: torch.Tensor) -> None:
        """The normalised value (1×C×1×1, or one per channel) that uncovered pixels take."""
        self.fill = fill.detach().reshape(1, -1, 1, 1).to(self.fill)

    def matrix(self, m: torch.Tensor | float, batch: int, random: bool) -> torch.Tensor:
        """The per-sample B×2×3 affine matrices (gated towards identity in random mode)."""
        device = self.code.device
        h = torch.cat([self.code.expand(batch, 6), _magnitudes(m, batch, device)], dim=1)
        if random:  # per-sample, per-entry noise (it also hits the magnitude entry, as in the code)
            h = h + CODE_NOISE * torch.randn_like(h)
        theta = self.fc(h).view(batch, 2, 3)
        if random:
            gate = relaxed_bernoulli(self.gate_logit.expand(batch), GATE_TEMPERATURE).view(batch, 1, 1)
            theta = (1.0 - gate) * self.identity + gate * theta
        return theta

    def forward(self, x: torch.Tensor, m: torch.Tensor | float, random: bool = True) -> torch.Tensor:
        return warp(x, self.matrix(m, x.shape[0], random), self.fill)


def warp(
    x: torch.Tensor, theta: torch.Tensor, fill: torch.Tensor | float = 0.0, mode: str = "bilinear"
) -> torch.Tensor:
    """Affine warp of N×C×H×W by B×2×3 matrices (output → input, normalised coordinates, align_corners
    False), uncovered pixels set to `fill`: the one warp of f_STN, of f_DE's Â (dense tasks) and of their
    targets (masks and label maps with mode "nearest"), so images and targets cannot disagree."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    fill = torch.as_tensor(fill, dtype=x.dtype, device=x.device)
    # Warping x − fill with zero padding and adding fill back puts `fill` where the warp uncovers pixels.
    warped = F.grid_sample(x - fill, grid, mode=mode, padding_mode="zeros", align_corners=False)
    return warped + fill


class ColorEncoder(nn.Module):
    """f_CN: x' = C((scale·x + shift)·M), scale/shift regressed from [θ_E,V + ε, m]; M masks zero padding."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.code = nn.Parameter(torch.randn(10))  # θ_E,V
        self.global_regress = nn.Linear(11, 2, bias=False)
        self.op_regress = nn.Linear(11, 2, bias=False)
        self.scale_range = nn.Parameter(torch.ones(1))  # c: scale ∈ (1 − c/2, 1 + c/2)
        self.gate_logit = nn.Parameter(torch.zeros(1))
        self.conv = nn.Conv2d(channels, channels, 5, padding=2, bias=False)  # θ_E,C

    def scale_shift(
        self, m: torch.Tensor | float, batch: int, random: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample scale and shift, each B×1×1×1."""
        device = self.code.device
        code = self.code + CODE_NOISE * torch.randn_like(self.code)  # always on, one draw per batch
        h = torch.cat([code.expand(batch, 10), _magnitudes(m, batch, device)], dim=1)
        raw = self.global_regress(h) + self.op_regress(h)
        scale = self.scale_range * (torch.sigmoid(raw[:, :1]) - 0.5) + 1.0
        shift = torch.sigmoid(raw[:, 1:]) - 0.5
        if random:
            gate = relaxed_bernoulli(self.gate_logit.expand(batch, 1), GATE_TEMPERATURE)
            scale = 1.0 - gate + gate * scale
            shift = gate * shift
        return scale.view(batch, 1, 1, 1), shift.view(batch, 1, 1, 1)

    @staticmethod
    def padding_mask(x: torch.Tensor) -> torch.Tensor:
        """1 except on rows/columns made only of all-zero pixels (the zero padding of a warp)."""
        with torch.no_grad():
            height, width = x.shape[-2:]
            zero = (x.sum(dim=1, keepdim=True) == 0).float()
            keep = (zero.sum(dim=-1, keepdim=True) < width) & (zero.sum(dim=-2, keepdim=True) < height)
            return keep.to(x.dtype)

    def forward(self, x: torch.Tensor, m: torch.Tensor | float, random: bool = True) -> torch.Tensor:
        scale, shift = self.scale_shift(m, x.shape[0], random)
        return self.conv((scale.to(x.dtype) * x + shift.to(x.dtype)) * self.padding_mask(x))


def make_encoder(op: str, channels: int) -> nn.Module:
    """A fresh (unfitted) meta-encoder for magnitude op `op`."""
    if op in AFFINE_OPS:
        return SpatialEncoder()
    if op in COLOR_OPS:
        return ColorEncoder(channels)
    raise choice_error("magnitude op", op, MAGNITUDE_OPS, ConfigError)


def make_encoders(channels: int) -> nn.ModuleDict:
    """One fresh meta-encoder per magnitude op, keyed by op name, in θ_m order."""
    return nn.ModuleDict({op: make_encoder(op, channels) for op in MAGNITUDE_OPS})


def black_fill(normalizer: Normalizer, channels: int, device: torch.device) -> torch.Tensor:
    """The normalised value of a black pixel (1×C×1×1): how the uint8 targets fill uncovered pixels."""
    return normalizer(torch.zeros(1, channels, 1, 1, dtype=torch.uint8, device=device)).float()


def set_fill(encoders: nn.ModuleDict, fill: torch.Tensor) -> None:
    """Give every spatial encoder the fill of its fit."""
    for encoder in encoders.values():
        if isinstance(encoder, SpatialEncoder):
            encoder.set_fill(fill)
