"""DPK's per-stage transformation modules T_s(F^s, F^t) (paper §2.2, App. A.2, Tables 7–8).

Each module takes the student map F^s (B×C_s×H×W) and the teacher map F^t (B×C_t×H×W, already resized
to the student's H×W and detached), a mask ratio π, and returns the predicted teacher map plus the
pixel mask of the positions that came from the student. Variants:

* `encdec` (default): k×k patch embeddings + positional embeddings, a ViT encoder per side, stitching
  (a fraction π of the student tokens, at positions chosen by the stage's mask strategy, replaced by
  the teacher tokens at the same positions), decoder embedding + decoder positional embedding, the
  shared ViT decoder, a linear head to C_t·k², un-patchify.
* `mlp_decoder` (Table 8 "MLP-Decoder"): no encoders; patch embedding followed by one MLP layer
  (GELU + linear) and the positional embedding form the tokens; the rest as `encdec`.
* `conv` (Table 8 "Conv"): the same stitching on a d-channel map, with 3×3 conv-BN-ReLU encoders and
  decoder, a global-pooling + FC context added to every position, and a 1×1 conv head.
* `fitnet` (Table 8 "Baseline"): a 1×1 conv from C_s to C_t, no masking.

`prior` (Table 7) chooses what fills the masked positions: the teacher tokens (`teacher`), zeros
(`zeros`) or one learnable mask token (`learnable`); without the teacher prior no teacher branch is built.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from datakd.errors import choice_error
from datakd.losses.dpk_blocks import (
    PatchEmbed,
    Transformer,
    init_vit_weights,
    mask_to_map,
    positional_embedding,
    unpatchify,
)
from datakd.losses.dpk_masks import token_mask

TRANSFORMS = ("encdec", "mlp_decoder", "conv", "fitnet")
PRIORS = ("teacher", "zeros", "learnable")


@dataclass(frozen=True)
class StageSpec:
    """One distilled stage: channels of both maps, the (student) resolution and the token layout."""

    student_channels: int
    teacher_channels: int
    height: int
    width: int
    patch: int
    dim: int
    heads: int
    encoder_depth: int
    decoder_depth: int
    mlp_ratio: float
    prior: str
    mask: str = "random"  # Table 6 mask strategy (datakd.losses.dpk_masks)

    @property
    def tokens(self) -> int:
        return (self.height // self.patch) * (self.width // self.patch)

    def token_mask(self, ratio: torch.Tensor | float, batch: int, device: torch.device) -> torch.Tensor:
        """B×N mask of the positions that take the prior, by this stage's mask strategy."""
        return token_mask(
            self.mask, ratio, batch, self.height // self.patch, self.width // self.patch, device
        )


@dataclass
class StageOutput:
    """The predicted teacher map and, when tokens were masked, where the student's own tokens were."""

    prediction: torch.Tensor
    student_positions: torch.Tensor | None  # B×1×H×W bool, True where the student token was kept


class TokenSide(nn.Module):
    """One side's tokens: patch embedding, then (encdec) pos-emb + ViT encoder or (mlp) MLP + pos-emb."""

    def __init__(self, channels: int, spec: StageSpec, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.embed = PatchEmbed(channels, spec.dim, spec.patch)
        self.pos = positional_embedding(spec.tokens, spec.dim)
        if kind == "encdec":
            self.encoder: nn.Module = Transformer(spec.dim, spec.encoder_depth, spec.heads, spec.mlp_ratio)
        else:
            self.encoder = nn.Sequential(nn.GELU(), nn.Linear(spec.dim, spec.dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x)
        if self.kind == "encdec":
            return self.encoder(tokens + self.pos)
        return self.encoder(tokens) + self.pos


class TokenTransform(nn.Module):
    """`encdec` and `mlp_decoder`: tokens per side, stitching, shared ViT decoder, linear head."""

    def __init__(self, spec: StageSpec, kind: str = "encdec") -> None:
        super().__init__()
        self.spec = spec
        d = spec.dim
        self.student = TokenSide(spec.student_channels, spec, kind)
        self.teacher = TokenSide(spec.teacher_channels, spec, kind) if spec.prior == "teacher" else None
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d)) if spec.prior == "learnable" else None
        self.decoder_embed = nn.Linear(d, d)
        self.decoder_pos = positional_embedding(spec.tokens, d)
        self.decoder = Transformer(d, spec.decoder_depth, spec.heads, spec.mlp_ratio)
        self.head = nn.Linear(d, spec.teacher_channels * spec.patch**2)
        init_vit_weights(self)
        if self.mask_token is not None:
            nn.init.normal_(self.mask_token, std=0.02)

    def prior_tokens(self, ft: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if self.teacher is not None:
            return self.teacher(ft)
        if self.mask_token is not None:
            return self.mask_token.expand_as(like)
        return torch.zeros_like(like)

    def forward(self, fs: torch.Tensor, ft: torch.Tensor, ratio: torch.Tensor | float) -> StageOutput:
        spec = self.spec
        s_tokens = self.student(fs)
        prior = self.prior_tokens(ft, s_tokens)
        mask = spec.token_mask(ratio, fs.shape[0], fs.device)
        hybrid = torch.where(mask.unsqueeze(-1), prior.to(s_tokens.dtype), s_tokens)
        decoded = self.decoder(self.decoder_embed(hybrid) + self.decoder_pos)
        prediction = unpatchify(
            self.head(decoded), spec.teacher_channels, spec.height, spec.width, spec.patch
        )
        return StageOutput(prediction, ~mask_to_map(mask, spec.height, spec.width, spec.patch))


def conv_stack(in_channels: int, width: int, depth: int) -> nn.Sequential:
    """`depth` (≥ 1) 3×3 conv-BN-ReLU layers, the first mapping in_channels to width."""
    layers: list[nn.Module] = []
    for i in range(max(depth, 1)):
        layers += [
            nn.Conv2d(in_channels if i == 0 else width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


class ConvTransform(nn.Module):
    """Table 8 "Conv": conv encoders, stitching of k×k patches, conv decoder + pooled FC context, 1×1 head."""

    def __init__(self, spec: StageSpec) -> None:
        super().__init__()
        self.spec = spec
        d = spec.dim
        self.student = conv_stack(spec.student_channels, d, spec.encoder_depth)
        self.teacher = (
            conv_stack(spec.teacher_channels, d, spec.encoder_depth) if spec.prior == "teacher" else None
        )
        self.mask_token = nn.Parameter(torch.zeros(1, d, 1, 1)) if spec.prior == "learnable" else None
        self.decoder = conv_stack(d, d, spec.decoder_depth)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.context = nn.Linear(d, d)
        self.head = nn.Conv2d(d, spec.teacher_channels, 1)
        if self.mask_token is not None:
            nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, fs: torch.Tensor, ft: torch.Tensor, ratio: torch.Tensor | float) -> StageOutput:
        spec = self.spec
        s_map = self.student(fs)
        if self.teacher is not None:
            prior = self.teacher(ft)
        elif self.mask_token is not None:
            prior = self.mask_token.expand_as(s_map)
        else:
            prior = torch.zeros_like(s_map)
        mask = spec.token_mask(ratio, fs.shape[0], fs.device)
        masked = mask_to_map(mask, spec.height, spec.width, spec.patch)
        decoded = self.decoder(torch.where(masked, prior.to(s_map.dtype), s_map))
        context = self.context(self.pool(decoded).flatten(1))[:, :, None, None]
        return StageOutput(self.head(decoded + context), ~masked)


class FitNetTransform(nn.Module):
    """Table 8 "Baseline" (FitNets): a 1×1 conv regressor from the student map to the teacher's channels."""

    def __init__(self, spec: StageSpec) -> None:
        super().__init__()
        self.regressor = nn.Conv2d(spec.student_channels, spec.teacher_channels, 1)

    def forward(self, fs: torch.Tensor, ft: torch.Tensor, ratio: torch.Tensor | float) -> StageOutput:
        return StageOutput(self.regressor(fs), None)


def build_transform(kind: str, spec: StageSpec) -> nn.Module:
    if kind in ("encdec", "mlp_decoder"):
        return TokenTransform(spec, kind)
    if kind == "conv":
        return ConvTransform(spec)
    if kind == "fitnet":
        return FitNetTransform(spec)
    raise choice_error("dpk transform", kind, TRANSFORMS)
