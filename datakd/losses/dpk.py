"""DPK — dynamic prior knowledge feature distillation (Zong, Qiu, Ma et al., ICLR 2023).

Per distilled stage, the student and teacher maps become tokens, each side is encoded by its own ViT
encoder, a fraction π of the student tokens is replaced by the teacher tokens at the same positions
(the teacher's "prior knowledge"), a shared ViT decoder predicts the teacher map from the hybrid tokens,
and the loss is the MSE to the raw teacher map (spec §5). π is set every step to 1 − CKA of the stage's
student and teacher features on the current batch (Eq. 5–7), so a student far from its teacher is shown
more of the teacher. All modules are training-only: the student is unchanged at inference.

Use with `ce` (weight 1) and `kd` (weight α = 0.8) in the recipe; this term's weight is β = 0.2 and its
value is Σ_stages w_stage · MSE_stage. The transformation modules live in `self.stages`, a ModuleDict
keyed by the student tap, so they are saved with the run and trained with the student's optimizer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from datakd.api import distributed as D
from datakd.api.context import SetupContext, TermInputs
from datakd.api.features import stage_taps
from datakd.errors import ConfigError, DatakdError, choice_error
from datakd.losses.base import LossTerm, as_list, register_loss
from datakd.losses.dpk_blocks import auto_patch_size, check_patch_size
from datakd.losses.dpk_masks import check_mask
from datakd.losses.dpk_transforms import PRIORS, TRANSFORMS, StageSpec, build_transform
from datakd.metrics import MIN_SAMPLES, cka_from_hsic, hsic_terms

RATIO_MODES = ("cka", "cosine", "exp_decay", "linear_decay")
CKA_WINDOWS = ("batch", "epoch")
LOSS_ON = ("full", "non_masked")


def column_name(tap: str) -> str:
    """A tap as a metrics.csv / ModuleDict-safe name (``layer3.1:input`` → ``layer3_1_input``)."""
    return re.sub(r"\W", "_", tap)


@dataclass(frozen=True)
class StagePair:
    key: str
    student_tap: str
    teacher_tap: str
    spec: StageSpec


@register_loss("dpk")
class DynamicPriorKnowledge(LossTerm):
    """DPK: ViT feature distillation where a fraction π = 1 − CKA of student tokens become teacher tokens."""

    def __init__(
        self,
        student: list[str] | str | None = None,
        teacher: list[str] | str | None = None,
        width: int = 512,
        heads: int = 8,
        encoder_depth: int = 6,
        decoder_depth: int | None = None,
        mlp_ratio: float = 4.0,
        patch_size: int | list[int] | None = None,
        max_tokens: int = 64,
        ratio: str | float = "cka",
        ratio_start: float = 1.0,
        ratio_decay: float = 0.95,
        cka_window: str = "batch",
        prior: str = "teacher",
        transform: str = "encdec",
        loss_on: str = "full",
        stage_weights: list[float] | None = None,
        mask: str = "random",
    ) -> None:
        super().__init__()
        self.student_taps, self.teacher_taps = as_list(student), as_list(teacher)
        check_mask(mask, ratio)
        self.mask = mask
        if isinstance(ratio, bool) or not isinstance(ratio, (str, int, float)):
            raise ConfigError(f"dpk.ratio must be a number in [0, 1] or one of {', '.join(RATIO_MODES)}")
        if isinstance(ratio, str) and ratio not in RATIO_MODES:
            raise choice_error("dpk.ratio", ratio, RATIO_MODES, ConfigError)
        if not isinstance(ratio, str) and not 0.0 <= ratio <= 1.0:
            raise ConfigError(f"dpk.ratio {ratio} is outside [0, 1]")
        for name, value, choices in (
            ("cka_window", cka_window, CKA_WINDOWS),
            ("prior", prior, PRIORS),
            ("transform", transform, TRANSFORMS),
            ("loss_on", loss_on, LOSS_ON),
        ):
            if value not in choices:
                raise choice_error(f"dpk.{name}", value, choices, ConfigError)
        for name, value in (("width", width), ("heads", heads), ("max_tokens", max_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"dpk.{name} must be a positive integer, got {value!r}")
        for name, value in (("encoder_depth", encoder_depth), ("decoder_depth", decoder_depth)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ConfigError(f"dpk.{name} must be an integer ≥ 0, got {value!r}")
        if width % heads:
            raise ConfigError(f"dpk.width {width} is not divisible by dpk.heads {heads}")
        if not 0.0 <= ratio_start <= 1.0 or ratio_decay < 0:
            raise ConfigError("dpk.ratio_start must be in [0, 1] and dpk.ratio_decay ≥ 0")
        self.width, self.heads, self.mlp_ratio = width, heads, mlp_ratio
        self.encoder_depth, self.decoder_depth = encoder_depth, decoder_depth
        self.patch_size, self.max_tokens = patch_size, max_tokens
        self.ratio, self.ratio_start, self.ratio_decay = ratio, float(ratio_start), float(ratio_decay)
        self.cka_window, self.prior, self.transform, self.loss_on = cka_window, prior, transform, loss_on
        self.stage_weights = stage_weights
        self.stages = nn.ModuleDict()
        self.pairs: list[StagePair] = []

    # ----------------------------------------------------------------- setup
    def _resolve_taps(self, ctx: SetupContext) -> None:
        if ctx.teacher is None:
            raise DatakdError("dpk distils teacher features: run it with `datakd distill` and a teacher")
        if not self.student_taps:
            self.student_taps = stage_taps(ctx.student)
        if not self.teacher_taps:
            self.teacher_taps = stage_taps(ctx.teacher)
        if not self.student_taps or not self.teacher_taps:
            raise DatakdError(
                "dpk: a model has no named stage taps; list the taps explicitly (loss.dpk.student / "
                "loss.dpk.teacher, see `datakd info --model NAME`)"
            )
        if len(self.student_taps) != len(self.teacher_taps):
            raise DatakdError(
                f"dpk pairs student taps {self.student_taps} with teacher taps {self.teacher_taps} one to "
                "one; give lists of equal length in loss.dpk.student / loss.dpk.teacher"
            )

    def _patches(self, count: int) -> list[int | None]:
        if self.patch_size is None:
            return [None] * count
        patches = as_list(self.patch_size) if isinstance(self.patch_size, list) else [self.patch_size]
        if len(patches) == 1:
            patches = patches * count
        if len(patches) != count:
            raise ConfigError(f"dpk.patch_size has {len(patches)} entries for {count} stages")
        return list(patches)

    def setup(self, ctx: SetupContext) -> None:
        self._resolve_taps(ctx)
        self.stages = nn.ModuleDict()
        s_shapes = ctx.student_shapes(self.student_taps)
        t_shapes = ctx.teacher_shapes(self.teacher_taps)
        count = len(self.student_taps)
        weights = self.stage_weights if self.stage_weights is not None else [1.0] * count
        if len(weights) != count:
            raise ConfigError(f"dpk.stage_weights has {len(weights)} entries for {count} stages")
        self.stage_weights = [float(w) for w in weights]
        decoder_depth = self.decoder_depth if self.decoder_depth is not None else (6 if count == 1 else 4)
        self.pairs = []
        for s_tap, t_tap, patch in zip(self.student_taps, self.teacher_taps, self._patches(count)):
            s_shape, t_shape = s_shapes[s_tap], t_shapes[t_tap]
            for side, tap, shape in (("student", s_tap, s_shape), ("teacher", t_tap, t_shape)):
                if len(shape) != 3:
                    raise DatakdError(
                        f"dpk distils C×H×W feature maps, but {side} tap {tap!r} has shape {list(shape)}"
                    )
            _, height, width = s_shape
            patch = patch if patch is not None else auto_patch_size(height, width, self.max_tokens)
            check_patch_size(height, width, patch, f"dpk stage {s_tap!r}")
            if self.ratio == "cosine" and s_shape[0] != t_shape[0]:
                raise DatakdError(
                    f"dpk.ratio=cosine compares raw features and needs equal channels, but {s_tap!r} has "
                    f"{s_shape[0]} and teacher {t_tap!r} {t_shape[0]}; use ratio=cka"
                )
            spec = StageSpec(
                s_shape[0], t_shape[0], height, width, patch, self.width, self.heads,
                self.encoder_depth, decoder_depth, self.mlp_ratio, self.prior, self.mask,
            )  # fmt: skip
            key = column_name(s_tap)
            if key in self.stages:
                raise DatakdError(f"dpk: student tap {s_tap!r} is listed twice")
            self.stages[key] = build_transform(self.transform, spec)
            self.pairs.append(StagePair(key, s_tap, t_tap, spec))
        # Under DDP each rank computes CKA on its own slice of the global batch, so the bound is per rank.
        world = D.world_size()
        local = ctx.batch_size // world
        if self.ratio == "cka" and local < MIN_SAMPLES:
            where = f" over {world} processes gives {local} per process" if world > 1 else ""
            raise DatakdError(
                f"dpk.ratio=cka needs batches of at least {MIN_SAMPLES} per process (unbiased HSIC), "
                f"but data.batch_size is {ctx.batch_size}{where}"
            )
        # Running HSIC sums (cka_window=epoch) and the last π per stage (reused for a trailing batch of
        # fewer than 4 samples); buffers, so a mid-epoch resume continues exactly.
        self.register_buffer("hsic_sums", torch.zeros(count, 3, dtype=torch.float64))
        self.register_buffer("last_ratio", torch.full((count,), -1.0, dtype=torch.float64))

    def on_epoch_start(self, epoch: int) -> None:
        if hasattr(self, "hsic_sums"):
            self.hsic_sums.zero_()

    # ----------------------------------------------------------------- the mask ratio
    def _cka(self, index: int, ft: torch.Tensor, fs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            terms = hsic_terms(ft, fs)
            if self.cka_window == "batch":
                return cka_from_hsic(terms.xy, terms.xx, terms.yy)
            self.hsic_sums[index] += torch.stack([terms.xy, terms.xx, terms.yy])
            return cka_from_hsic(*self.hsic_sums[index])

    def _ratio(
        self, inputs: TermInputs, cka: torch.Tensor | None, fs: torch.Tensor, ft: torch.Tensor
    ) -> torch.Tensor | float:
        mode = self.ratio
        if not isinstance(mode, str):
            return float(mode)
        if mode == "cka":
            assert cka is not None
            value: torch.Tensor | float = 1.0 - cka
        elif mode == "cosine":
            with torch.no_grad():
                cos = F.cosine_similarity(fs.detach().flatten(1).float(), ft.flatten(1).float(), dim=1)
                value = 1.0 - cos.mean().double()
        elif mode == "exp_decay":
            value = self.ratio_start * self.ratio_decay**inputs.epoch
        else:  # linear_decay: ratio_decay is the total decrement over the run (see docs/methods/dpk.md)
            value = self.ratio_start - self.ratio_decay * inputs.epoch / max(inputs.total_epochs, 1)
        if isinstance(value, torch.Tensor):
            return value.clamp(0.0, 1.0)
        return min(max(value, 0.0), 1.0)

    # ----------------------------------------------------------------- the loss
    def forward(self, inputs: TermInputs) -> torch.Tensor:
        if not self.pairs:
            raise DatakdError("dpk was not set up (its setup(ctx) builds the per-stage modules)")
        name = self.term_name or "dpk"
        total: torch.Tensor | float = 0.0
        for index, pair in enumerate(self.pairs):
            fs = inputs.student_features[pair.student_tap]
            ft_raw = inputs.teacher_features[pair.teacher_tap].detach()
            batch = fs.shape[0]
            column = column_name(pair.student_tap)
            cka = None
            if batch >= MIN_SAMPLES:
                cka = self._cka(index, ft_raw, fs)
                inputs.log(f"{name}_cka_{column}", cka)
            ft = ft_raw
            if ft.shape[-2:] != fs.shape[-2:]:
                ft = F.interpolate(ft, size=fs.shape[-2:], mode="bilinear", align_corners=False)
            if cka is None and self.ratio == "cka":
                ratio: torch.Tensor | float = self._reuse_ratio(index, batch)
            else:
                ratio = self._ratio(inputs, cka, fs, ft)
                self.last_ratio[index] = torch.as_tensor(ratio, dtype=torch.float64)
            if self.transform != "fitnet":
                inputs.log(f"{name}_pi_{column}", torch.as_tensor(ratio, dtype=torch.float64))
            total = total + self.stage_weights[index] * self._stage_loss(pair.key, fs, ft, ratio)
        return total  # type: ignore[return-value]

    def _reuse_ratio(self, index: int, batch: int) -> torch.Tensor:
        previous = self.last_ratio[index]
        if bool(previous < 0):
            raise DatakdError(
                f"dpk: π = 1 − CKA needs a batch of at least {MIN_SAMPLES} samples, got {batch} "
                "(use a larger batch or a fixed ratio)"
            )
        return previous.clone()

    def _stage_loss(
        self, key: str, fs: torch.Tensor, ft: torch.Tensor, ratio: torch.Tensor | float
    ) -> torch.Tensor:
        module = self.stages[key]
        low = fs.dtype in (torch.bfloat16, torch.float16)
        # float32 (or float64, for gradient checks); under AMP the modules follow the features' precision.
        dtype = torch.float64 if fs.dtype == torch.float64 else torch.float32
        with torch.autocast(fs.device.type, dtype=fs.dtype, enabled=low):
            out = module(fs if low else fs.to(dtype), ft.to(fs.dtype) if low else ft.to(dtype), ratio)
        error = (out.prediction.to(dtype) - ft.to(dtype)).square()
        if self.loss_on == "non_masked" and out.student_positions is not None:
            keep = out.student_positions.to(dtype)
            return (error * keep).sum() / (keep.sum() * error.shape[1]).clamp_min(1.0)
        return error.mean()

    def extra_repr(self) -> str:
        ratio = self.ratio if isinstance(self.ratio, str) else f"fixed {self.ratio}"
        mask = "" if self.mask == "random" else f", mask={self.mask}"
        return f"{super().extra_repr()}, transform={self.transform}, prior={self.prior}, ratio={ratio}{mask}"

    def describe_stages(self) -> list[dict[str, Any]]:
        """Per-stage layout (taps, channels, resolution, patch, tokens) for docs and `datakd info`."""
        return [
            {
                "student": p.student_tap,
                "teacher": p.teacher_tap,
                "channels": (p.spec.student_channels, p.spec.teacher_channels),
                "size": (p.spec.height, p.spec.width),
                "patch": p.spec.patch,
                "tokens": p.spec.tokens,
            }
            for p in self.pairs
        ]
