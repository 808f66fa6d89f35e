"""ReviewKD (Chen et al. CVPR 2021): knowledge review through attention-based fusion across student levels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from datakd.api.context import SetupContext, TermInputs
from datakd.api.features import ALL_STAGES
from datakd.errors import DatakdError
from datakd.losses import relations as R
from datakd.losses.base import register_loss
from datakd.losses.feature_connectors import AttentionFusion
from datakd.losses.feature_taps import PairedFeatureTerm

DEFAULT_TAPS = (ALL_STAGES, "pre_logits")


def _as_map_shape(shape: tuple[int, ...], where: str) -> tuple[int, int, int]:
    if len(shape) == 1:  # a pooled vector is a 1×1 map
        return int(shape[0]), 1, 1
    if len(shape) != 3:
        raise DatakdError(f"{where}: expected a C×H×W map or a C vector, got shape {list(shape)}")
    return int(shape[0]), int(shape[1]), int(shape[2])


def _as_map(f: torch.Tensor) -> torch.Tensor:
    return f.view(f.shape[0], -1, 1, 1) if f.dim() == 2 else f


@register_loss("reviewkd")
class ReviewKD(PairedFeatureTerm):
    """ReviewKD: fuse student levels top-down with ABF and match all teacher levels with the HCL loss."""

    def __init__(
        self,
        warmup_epochs: float = 20.0,
        max_mid_channels: int = 512,
        levels: Sequence[int] = R.HCL_LEVELS,
        student: str | Sequence[str] = DEFAULT_TAPS,
        teacher: str | Sequence[str] = DEFAULT_TAPS,
    ) -> None:
        super().__init__(student, teacher)
        if warmup_epochs < 0:
            raise DatakdError(f"reviewkd.warmup_epochs must be >= 0, got {warmup_epochs}")
        if max_mid_channels < 1:
            raise DatakdError(f"reviewkd.max_mid_channels must be positive, got {max_mid_channels}")
        if any(isinstance(lv, bool) or not isinstance(lv, int) or lv < 1 for lv in levels):
            raise DatakdError(f"reviewkd.levels must be positive integers, got {list(levels)}")
        self.warmup_epochs = float(warmup_epochs)
        self.max_mid_channels = max_mid_channels
        self.levels = tuple(levels)
        self.fusions = nn.ModuleList()
        self.out_sizes: list[tuple[int, int]] = []
        self.epoch_scale = 1.0  # schedule.scale of the run: recipe epochs count × scale

    def build(self, ctx: SetupContext) -> None:
        config = ctx.extra.get("config")
        if config is not None:
            self.epoch_scale = float(config.schedule.scale)
        student = [_as_map_shape(s, f"{self.label}.student") for s in self.student_shapes]
        teacher = [_as_map_shape(t, f"{self.label}.teacher") for t in self.teacher_shapes]
        # As in the authors' code: the hidden width is the deepest student level's width, at most 512;
        # each level outputs the teacher level's channels at the teacher level's resolution.
        mid = min(self.max_mid_channels, student[-1][0])
        deepest = len(student) - 1
        self.fusions = nn.ModuleList(
            AttentionFusion(s[0], mid, t[0], fuse=i < deepest)
            for i, (s, t) in enumerate(zip(student, teacher))
        )
        self.out_sizes = [(t[1], t[2]) for t in teacher]

    def warmup_factor(self, epoch: int) -> float:
        """mdistiller's linear warm-up: min(epoch/W, 1) with epochs counted from 1 (0.05 in the first of
        W = 20 epochs, never 0); W follows the epoch-scaling rule (× schedule.scale)."""
        if self.warmup_epochs == 0:
            return 1.0
        return min((epoch + 1) / (self.warmup_epochs * self.epoch_scale), 1.0)

    def fuse(self, student_features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Outputs for every level (shallow to deep), computed deep to shallow through the residual path."""
        outputs: list[torch.Tensor] = [student_features[0]] * len(student_features)
        residual = None
        for i in reversed(range(len(student_features))):
            outputs[i], residual = self.fusions[i](_as_map(student_features[i]), residual, self.out_sizes[i])
        return outputs

    def forward(self, inputs: TermInputs) -> torch.Tensor:
        pairs = self.pairs(inputs)
        outputs = self.fuse([fs for fs, _ in pairs])
        loss = R.hierarchical_context_loss(outputs, [_as_map(ft) for _, ft in pairs], self.levels)
        factor = self.warmup_factor(inputs.epoch)
        inputs.log(f"{self.term_name}_warmup", factor)
        return loss * factor
