"""FGD, Focal and Global Distillation for detectors (Yang et al., CVPR 2022) [methods.md §7.2].

Per FPN level: focal distillation separates foreground (inside ground-truth boxes, weighted towards small
boxes) from background and weights the squared feature difference by the teacher's spatial and channel
attention; an attention loss asks the student to attend where the teacher does; global distillation
matches GcBlock outputs (separate, trainable student and teacher blocks) so that relations between pixels
are transferred. The formulas are in `datakd.losses.fgd_functional`; this file holds the trainable parts:
the 1×1 align conv (only when channels differ) and the two GC blocks per level.

The authors' presets (α, β, γ, λ, T) are chosen by `preset`; `auto` picks the one of the student's family
at the first step. Every value can be overridden.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from datakd.api.context import SetupContext, TermInputs
from datakd.errors import ConfigError, choice_error
from datakd.losses import fgd_functional as FF
from datakd.losses.base import LossTerm, register_loss
from datakd.losses.mimic import FPN_PREFIX, level_features, level_names, paired_levels

# (alpha_fg, beta_bg, gamma_att, lambda_rel, temperature), the authors' configs.
PRESETS: dict[str, tuple[float, float, float, float, float]] = {
    "two_stage": (5e-5, 2.5e-5, 5e-5, 5e-7, 0.5),
    "retinanet": (1e-3, 5e-4, 5e-4, 5e-6, 0.5),
    "fcos": (1.6e-3, 8e-4, 8e-4, 8e-6, 0.8),
}
FAMILY_PRESET = {"rcnn": "two_stage", "maskrcnn": "two_stage", "retinanet": "retinanet", "fcos": "fcos"}
MASK_SCALES = ("unpadded", "padded")


class GlobalContext(nn.Module):
    """GcBlock as FGD uses it: F + W2·ReLU(LN(W1·Σ_j softmax_j(W_k F)·F_j)), W2 (and its bias) zero at
    start so that the block begins as the identity; the key conv is He-normal (fan-in) with zero bias."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels < 2:
            raise ConfigError(f"fgd's global context block needs at least 2 channels, got {channels}")
        hidden = channels // 2
        self.key = nn.Conv2d(channels, 1, kernel_size=1)
        self.transform = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.LayerNorm([hidden, 1, 1]),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, kernel_size=1),
        )
        nn.init.kaiming_normal_(self.key.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.key.bias)
        nn.init.zeros_(self.transform[-1].weight)
        nn.init.zeros_(self.transform[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.transform(FF.context_pool(x, self.key(x)))


class FGDLevel(nn.Module):
    """The trainable parts of one level: align conv (student → teacher channels) and both GC blocks."""

    def __init__(self, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        self.align: nn.Module = (
            nn.Conv2d(student_channels, teacher_channels, kernel_size=1)
            if student_channels != teacher_channels
            else nn.Identity()
        )
        self.gc_student = GlobalContext(teacher_channels)
        self.gc_teacher = GlobalContext(teacher_channels)


def _non_negative(name: str, value: float | None, prefix: str = "fgd") -> float | None:
    if value is not None and (isinstance(value, bool) or not value >= 0):
        raise ConfigError(f"{prefix}.{name} must be a number >= 0, got {value!r}")
    return value


@register_loss("fgd")
class FGD(LossTerm):
    """FGD (Yang et al. 2022): focal (fg/bg, attention-weighted) and global (GcBlock) feature distillation."""

    tasks = ("detection",)
    #: (α, β, γ, λ, T) by preset name, and the option prefix of error messages (subclasses change both).
    presets: ClassVar[dict[str, tuple[float, float, float, float, float]]] = PRESETS
    option_prefix: ClassVar[str] = "fgd"

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
    ) -> None:
        super().__init__()
        prefix = self.option_prefix
        if preset != "auto" and preset not in self.presets:
            raise choice_error(f"{prefix}.preset", preset, (*self.presets, "auto"), ConfigError)
        if mask_scale not in MASK_SCALES:
            raise choice_error(f"{prefix}.mask_scale", mask_scale, MASK_SCALES, ConfigError)
        if temperature is not None and (isinstance(temperature, bool) or not temperature > 0):
            raise ConfigError(f"{prefix}.temperature must be positive, got {temperature!r}")
        self.preset = preset
        self.overrides = (
            _non_negative("alpha_fg", alpha_fg, prefix),
            _non_negative("beta_bg", beta_bg, prefix),
            _non_negative("gamma_att", gamma_att, prefix),
            _non_negative("lambda_rel", lambda_rel, prefix),
            temperature,
        )
        self.levels = level_names(levels)
        self.mask_scale = mask_scale
        self.level_modules = nn.ModuleDict()

    def setup(self, ctx: SetupContext) -> None:
        # Default levels: P2-P5 of an R-CNN FPN, P3-P7 of RetinaNet/FCOS, i.e. all but R-CNN's "pool".
        pairs = paired_levels(ctx, self.term_name or self.option_prefix, self.levels, exclude=("pool",))
        self.levels = [level for level, _, _ in pairs]
        self.level_modules = nn.ModuleDict({level: FGDLevel(s[0], t[0]) for level, s, t in pairs})
        self.student_taps = [FPN_PREFIX + level for level in self.levels]
        self.teacher_taps = list(self.student_taps)

    def hyper_parameters(self, family: str | None) -> tuple[float, float, float, float, float]:
        """(α, β, γ, λ, T): the preset (by the student's family under `auto`) with the overrides applied."""
        preset = self.preset
        if preset == "auto":
            if family not in FAMILY_PRESET:
                raise choice_error(
                    f"detector family for {self.option_prefix}'s preset", family, FAMILY_PRESET, ConfigError
                )
            preset = FAMILY_PRESET[family]
        base = self.presets[preset]
        return tuple(b if o is None else float(o) for b, o in zip(base, self.overrides))  # type: ignore[return-value]

    def forward(self, inputs: TermInputs) -> torch.Tensor:
        if not self.level_modules:
            raise ConfigError(
                f"{self.option_prefix} was not set up (its align convs and GC blocks are built from FPN "
                "shapes)"
            )
        outputs = inputs.student_outputs
        alpha, beta, gamma, lam, temperature = self.hyper_parameters(outputs.get("family"))
        boxes = [t["boxes"] for t in outputs["targets"]]
        if self.mask_scale == "unpadded":
            sizes = [tuple(s) for s in outputs["image_sizes"]]
        else:
            sizes = [tuple(outputs["padded_size"])] * len(boxes)
        parts: dict[str, torch.Tensor] = {}
        total = None
        for level, module in self.level_modules.items():
            raw, ft = level_features(inputs, level)
            fs, ft = module.align(raw).float(), ft.detach().float()
            if fs.shape != ft.shape:
                raise ConfigError(
                    f"{self.option_prefix}: FPN level {level!r} is {tuple(fs.shape)} for the (aligned) "
                    f"student and {tuple(ft.shape)} for the teacher"
                )
            focal = self.focal_features(inputs, level, raw, fs, ft)
            fg, bg = FF.box_masks(boxes, sizes, (ft.shape[-2], ft.shape[-1]))
            spatial_t, channel_t = FF.attention(ft, temperature)
            spatial_s, channel_s = FF.attention(fs, temperature)
            losses = {
                "fg": FF.focal_feature_loss(focal, ft, fg.to(fs), spatial_t, channel_t),
                "bg": FF.focal_feature_loss(focal, ft, bg.to(fs), spatial_t, channel_t),
                "att": FF.attention_loss(spatial_s, spatial_t, channel_s, channel_t),
                "rel": FF.relation_loss(module.gc_student(fs).float(), module.gc_teacher(ft).float()),
            }
            level_total = (
                alpha * losses["fg"] + beta * losses["bg"] + gamma * losses["att"] + lam * losses["rel"]
            )
            total = level_total if total is None else total + level_total
            for key, value in losses.items():
                parts[key] = value.detach() + parts.get(key, 0.0)
        for key, value in parts.items():
            inputs.log(f"{self.term_name or self.option_prefix}_{key}", value)
        return total

    def focal_features(
        self, inputs: TermInputs, level: str, raw: torch.Tensor, aligned: torch.Tensor, teacher: torch.Tensor
    ) -> torch.Tensor:
        """The map the foreground/background terms compare with the teacher's: FGD's aligned student map
        (a hook, so that FGD + DPK can put its hybrid features here instead, paper 004 Eq. 9)."""
        return aligned
