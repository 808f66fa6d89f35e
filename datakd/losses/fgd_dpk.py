"""FGD + DPK for detectors (Zong, Qiu, Ma et al., ICLR 2023, §3.2, App. A.2, Eq. 8–9) [methods.md §5, §7.1].

DPK's detection rows plug DPK into FGD: FGD's foreground and background feature terms compare the teacher's
FPN level with DPK's hybrid features F^h instead of the aligned student map (Eq. 9):

    L_feat = w_f·Σ M_fg·A^S·A^C·(F^t − F^h)² + w_b·Σ M_bg·A^S·A^C·(F^t − F^h)²,

computed by FGD's own formulas (`fgd_functional.focal_feature_loss` with F^h in the student's place). F^h
comes from DPK's transformation module, one per FPN level: k×k patch embeddings of the student and the
teacher map, a ViT encoder per side, a fraction π of the student tokens replaced by the teacher tokens at
the same (uniformly random) positions, a shared ViT decoder and a linear head back to the teacher's map.
π is 1 − minibatch CKA of the level's raw student and teacher maps (the dynamic mechanism, Eq. 5–7) or a
fixed number. FGD's attention and global (GcBlock) terms are kept as FGD has them, on the aligned student
map (the paper replaces only the "feature mimicking part").

Our choices, where the paper says nothing for detection (docs/methods/dpk.md, "DPK inside FGD"):
* levels: FGD's (P2–P5 for R-CNNs, P3–P7 for one-stage detectors); one module and one π per level;
* width 256, 8 heads, 2 encoder and 2 decoder blocks by default (the recipes say what they use);
* patch size per level: given, or the smallest power of two that leaves ≤ `max_tokens` tokens on the
  level's map as measured before training; a map that is not a multiple of the patch is zero-padded on the
  right and bottom and the prediction cropped back;
* positional embeddings that work for any map size: fixed 2-D sine-cosine (`pos_embed: sincos`, default),
  or learnable 2-D tables on the measured token grid, bicubically resized when a batch's grid differs
  (`pos_embed: learned`), since on COCO the levels change size from batch to batch;
* w_f / w_b from App. A.2 (two-stage 5e-5 / 2.5e-5, one-stage 2e-3 / 5e-4); γ, λ and T from FGD's presets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from datakd.api import distributed as D
from datakd.api.context import SetupContext, TermInputs
from datakd.errors import ConfigError, DatakdError, choice_error
from datakd.losses.base import register_loss
from datakd.losses.dpk_blocks import (
    PatchEmbed,
    Transformer,
    init_vit_weights,
    random_token_mask,
    sincos_2d_embedding,
    unpatchify,
)
from datakd.losses.fgd import FGD, PRESETS
from datakd.losses.mimic import paired_levels
from datakd.metrics import MIN_SAMPLES, cka_minibatch

# (w_f, w_b, γ, λ, T): w_f / w_b from paper 004 App. A.2 (one value pair for all two-stage and all one-stage
# detectors); the attention and global weights and the temperature are FGD's.
DPK_PRESETS: dict[str, tuple[float, float, float, float, float]] = {
    "two_stage": (5e-5, 2.5e-5, *PRESETS["two_stage"][2:]),
    "retinanet": (2e-3, 5e-4, *PRESETS["retinanet"][2:]),
    "fcos": (2e-3, 5e-4, *PRESETS["fcos"][2:]),
}
POS_EMBEDS = ("sincos", "learned")
RATIO_MODES = ("cka",)


def level_patch(height: int, width: int, max_tokens: int) -> int:
    """The smallest power-of-two patch side k with ⌈H/k⌉·⌈W/k⌉ ≤ max_tokens (maps need not be multiples)."""
    k = 1
    while math.ceil(height / k) * math.ceil(width / k) > max_tokens:
        k *= 2
    return k


class LevelTransform(nn.Module):
    """DPK's encoder-decoder for one FPN level, on maps whose size may change from batch to batch.

    Built from DPK's blocks (patch embedding, pre-LN ViT, ViT initialisation); unlike the classification
    module its token grid is taken from each batch (zero-padding to a multiple of the patch), hence 2-D
    positional embeddings that are defined for any grid.
    """

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        patch: int,
        dim: int,
        heads: int,
        encoder_depth: int,
        decoder_depth: int,
        mlp_ratio: float,
        pos_embed: str,
        grid: tuple[int, int],
    ) -> None:
        super().__init__()
        self.patch, self.dim, self.teacher_channels, self.pos_embed = patch, dim, teacher_channels, pos_embed
        self.student_embed = PatchEmbed(student_channels, dim, patch)
        self.teacher_embed = PatchEmbed(teacher_channels, dim, patch)
        self.student_encoder = Transformer(dim, encoder_depth, heads, mlp_ratio)
        self.teacher_encoder = Transformer(dim, encoder_depth, heads, mlp_ratio)
        self.decoder_embed = nn.Linear(dim, dim)
        self.decoder = Transformer(dim, decoder_depth, heads, mlp_ratio)
        self.head = nn.Linear(dim, teacher_channels * patch**2)
        init_vit_weights(self)
        self.positions = nn.ParameterDict()
        if pos_embed == "learned":
            for side in ("student", "teacher", "decoder"):
                table = torch.empty(1, dim, *grid)
                nn.init.trunc_normal_(table, std=0.02)
                self.positions[side] = nn.Parameter(table)

    def position(self, side: str, rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
        """1×N×d positional embedding of a rows×cols token grid for one side (student, teacher, decoder)."""
        if self.pos_embed == "sincos":
            return sincos_2d_embedding(rows, cols, self.dim, like.device, like.dtype)
        table = self.positions[side]
        if tuple(table.shape[-2:]) != (rows, cols):
            table = F.interpolate(table, size=(rows, cols), mode="bicubic", align_corners=False)
        return table.flatten(2).transpose(1, 2).to(like.dtype)

    def forward(
        self, fs: torch.Tensor, ft: torch.Tensor, ratio: torch.Tensor | float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(F^h, B×N mask): the decoded hybrid features (B×C_t×H×W, the teacher map's shape) and which tokens
        came from the teacher (round(π·N) per sample, uniformly random positions)."""
        height, width = fs.shape[-2:]
        k = self.patch
        pad = (0, (-width) % k, 0, (-height) % k)
        rows, cols = (height + pad[3]) // k, (width + pad[1]) // k
        s = self.student_embed(F.pad(fs, pad))
        t = self.teacher_embed(F.pad(ft, pad))
        s = self.student_encoder(s + self.position("student", rows, cols, s))
        t = self.teacher_encoder(t + self.position("teacher", rows, cols, t))
        mask = random_token_mask(ratio, fs.shape[0], rows * cols, fs.device)
        hybrid = torch.where(mask.unsqueeze(-1), t.to(s.dtype), s)
        tokens = self.decoder_embed(hybrid)
        decoded = self.decoder(tokens + self.position("decoder", rows, cols, tokens))
        out = unpatchify(self.head(decoded), self.teacher_channels, rows * k, cols * k, k)
        return out[..., :height, :width], mask


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"fgd_dpk.{name} must be a positive integer, got {value!r}")
    return value


@register_loss("fgd_dpk")
class FGDDPK(FGD):
    """FGD + DPK (Zong et al. 2023, Eq. 9): FGD's fg/bg terms on DPK's hybrid features, π = 1 − CKA per level.

    The teacher is compared with F^h instead of the aligned student map; π may also be fixed."""

    presets = DPK_PRESETS
    option_prefix = "fgd_dpk"

    def __init__(
        self,
        preset: str = "auto",
        alpha_fg: float | None = None,
        beta_bg: float | None = None,
        gamma_att: float | None = None,
        lambda_rel: float | None = None,
        temperature: float | None = None,
        levels: str | int | Sequence[str | int] | None = None,
        mask_scale: str = "unpadded",
        ratio: str | float = "cka",
        width: int = 256,
        heads: int = 8,
        encoder_depth: int = 2,
        decoder_depth: int = 2,
        mlp_ratio: float = 4.0,
        patch_size: int | Sequence[int] | None = None,
        max_tokens: int = 64,
        pos_embed: str = "sincos",
    ) -> None:
        super().__init__(preset, alpha_fg, beta_bg, gamma_att, lambda_rel, temperature, levels, mask_scale)
        if isinstance(ratio, str):
            if ratio not in RATIO_MODES:
                raise choice_error("fgd_dpk.ratio (or a number in [0, 1])", ratio, RATIO_MODES, ConfigError)
        elif isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
            raise ConfigError(f"fgd_dpk.ratio must be 'cka' or a number in [0, 1], got {ratio!r}")
        if pos_embed not in POS_EMBEDS:
            raise choice_error("fgd_dpk.pos_embed", pos_embed, POS_EMBEDS, ConfigError)
        for name, value in (("width", width), ("heads", heads), ("max_tokens", max_tokens)):
            _positive_int(name, value)
        for name, value in (("encoder_depth", encoder_depth), ("decoder_depth", decoder_depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"fgd_dpk.{name} must be an integer >= 0, got {value!r}")
        if width % heads:
            raise ConfigError(f"fgd_dpk.width {width} is not divisible by fgd_dpk.heads {heads}")
        if pos_embed == "sincos" and width % 4:
            raise ConfigError(f"fgd_dpk.width {width} must be divisible by 4 for pos_embed=sincos")
        if patch_size is not None:
            patches = [patch_size] if isinstance(patch_size, int) else list(patch_size)
            for value in patches:
                _positive_int("patch_size", value)
            if not patches:
                raise ConfigError("fgd_dpk.patch_size must be an integer or a list with one per level")
        self.ratio = ratio if isinstance(ratio, str) else float(ratio)
        self.width, self.heads, self.mlp_ratio = width, heads, float(mlp_ratio)
        self.encoder_depth, self.decoder_depth = encoder_depth, decoder_depth
        self.patch_size, self.max_tokens, self.pos_embed = patch_size, max_tokens, pos_embed
        self.transforms = nn.ModuleDict()
        self.level_index: dict[str, int] = {}

    def _patches(self, shapes: list[tuple[int, ...]]) -> list[int]:
        if self.patch_size is None:
            return [level_patch(s[1], s[2], self.max_tokens) for s in shapes]
        if isinstance(self.patch_size, int):
            return [self.patch_size] * len(shapes)
        patches = list(self.patch_size)
        if len(patches) != len(shapes):
            raise ConfigError(
                f"fgd_dpk.patch_size has {len(patches)} entries for {len(shapes)} levels {self.levels}"
            )
        return patches

    def setup(self, ctx: SetupContext) -> None:
        super().setup(ctx)
        pairs = paired_levels(ctx, self.term_name or self.option_prefix, self.levels)
        patches = self._patches([s for _, s, _ in pairs])
        self.transforms = nn.ModuleDict()
        for (level, s_shape, t_shape), patch in zip(pairs, patches):
            grid = (math.ceil(s_shape[1] / patch), math.ceil(s_shape[2] / patch))
            self.transforms[level] = LevelTransform(
                s_shape[0], t_shape[0], patch, self.width, self.heads, self.encoder_depth,
                self.decoder_depth, self.mlp_ratio, self.pos_embed, grid,
            )  # fmt: skip
        self.level_index = {level: i for i, level in enumerate(self.levels)}
        local = ctx.batch_size // D.world_size()
        if self.ratio == "cka" and local < MIN_SAMPLES:
            raise DatakdError(
                f"fgd_dpk.ratio=cka needs batches of at least {MIN_SAMPLES} images per process (unbiased "
                f"HSIC), but each process gets {local}; use a larger data.batch_size or a fixed ratio"
            )
        # The last π per level, reused for a trailing batch of fewer than 4 images; a buffer (checkpointed).
        self.register_buffer("last_ratio", torch.full((len(self.levels),), -1.0, dtype=torch.float64))

    def level_ratio(
        self, inputs: TermInputs, level: str, student: torch.Tensor, teacher: torch.Tensor
    ) -> torch.Tensor:
        """π of one level: 1 − minibatch CKA of the raw maps (clamped to [0, 1]) or the fixed value; logs
        `<term>_cka_<level>` (when the batch has ≥ 4 images) and `<term>_pi_<level>`."""
        name = self.term_name or self.option_prefix
        index = self.level_index[level]
        cka = None
        if student.shape[0] >= MIN_SAMPLES:
            cka = cka_minibatch(teacher.detach().float(), student.detach().float())
            inputs.log(f"{name}_cka_{level}", cka)
        if self.ratio != "cka":
            ratio = torch.tensor(float(self.ratio), dtype=torch.float64)
        elif cka is not None:
            ratio = (1.0 - cka).clamp(0.0, 1.0)
            self.last_ratio[index] = ratio
        elif bool(self.last_ratio[index] >= 0):
            ratio = self.last_ratio[index].clone()
        else:
            raise DatakdError(
                f"fgd_dpk: π = 1 − CKA needs a batch of at least {MIN_SAMPLES} images, got "
                f"{student.shape[0]} (use a larger batch or a fixed ratio)"
            )
        inputs.log(f"{name}_pi_{level}", ratio)
        return ratio

    def hybrid_features(
        self, level: str, student: torch.Tensor, teacher: torch.Tensor, ratio: torch.Tensor | float
    ) -> torch.Tensor:
        """F^h of one level: DPK's module on the raw student map and the detached teacher map."""
        prediction, _ = self.transforms[level](student.float(), teacher.detach().float(), ratio)
        return prediction.float()

    def focal_features(
        self, inputs: TermInputs, level: str, raw: torch.Tensor, aligned: torch.Tensor, teacher: torch.Tensor
    ) -> torch.Tensor:
        if not self.transforms:
            raise ConfigError("fgd_dpk was not set up (its DPK modules are built from the FPN shapes)")
        ratio = self.level_ratio(inputs, level, raw, teacher)
        return self.hybrid_features(level, raw, teacher, ratio)

    def describe_levels(self) -> list[dict[str, Any]]:
        """Per level: patch side, token width and positional embedding (for docs and `datakd info`)."""
        return [
            {"level": level, "patch": module.patch, "width": module.dim, "pos_embed": module.pos_embed}
            for level, module in self.transforms.items()
        ]

    def extra_repr(self) -> str:
        ratio = self.ratio if isinstance(self.ratio, str) else f"fixed {self.ratio}"
        return f"{super().extra_repr()}, ratio={ratio}, pos_embed={self.pos_embed}"
