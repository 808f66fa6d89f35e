"""Correlation congruence (Peng et al. 2019) on linearly embedded penultimate features."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from datakd.api.context import SetupContext, TermInputs
from datakd.errors import DatakdError
from datakd.losses import relations as R
from datakd.losses.base import register_loss
from datakd.losses.feature_connectors import LinearEmbed, flat_dim
from datakd.losses.feature_taps import PairedFeatureTerm

FORMS = ("kernel", "repdistiller")


@register_loss("cc")
class CorrelationCongruence(PairedFeatureTerm):
    """Correlation congruence: match batch correlation matrices (Taylor-expanded Gaussian RBF kernel)."""

    def __init__(
        self,
        gamma: float = 0.4,
        order: int = 2,
        embed_dim: int = 128,
        form: str = "kernel",
        student: str | Sequence[str] = "pre_logits",
        teacher: str | Sequence[str] = "pre_logits",
    ) -> None:
        super().__init__(student, teacher)
        if form not in FORMS:
            raise DatakdError(f"cc.form {form!r} is not one of {', '.join(FORMS)}")
        if gamma <= 0:
            raise DatakdError(f"cc.gamma must be positive, got {gamma}")
        if isinstance(order, bool) or not isinstance(order, int) or order < 0:
            raise DatakdError(f"cc.order must be a non-negative integer, got {order!r}")
        if embed_dim < 1:
            raise DatakdError(f"cc.embed_dim must be positive, got {embed_dim}")
        self.gamma, self.order, self.embed_dim, self.form = float(gamma), order, embed_dim, form
        self.embed_s = nn.ModuleList()
        self.embed_t = nn.ModuleList()

    def build(self, ctx: SetupContext) -> None:
        # RepDistiller: a trainable linear embedding (no normalisation) on each side.
        self.embed_s = nn.ModuleList(LinearEmbed(flat_dim(s), self.embed_dim) for s in self.student_shapes)
        self.embed_t = nn.ModuleList(LinearEmbed(flat_dim(t), self.embed_dim) for t in self.teacher_shapes)

    def forward(self, inputs: TermInputs) -> torch.Tensor:
        total = inputs.student_logits.new_zeros(())
        for (fs, ft), es, et in zip(self.pairs(inputs), self.embed_s, self.embed_t):
            zs, zt = es(fs), et(ft)
            if self.form == "kernel":
                total = total + R.correlation_congruence_loss(zs, zt, self.gamma, self.order)
            else:
                total = total + R.correlation_congruence_repdistiller(zs, zt)
        return total
