"""FitNet (Romero et al. 2015): regress a student map onto a teacher "hint" map and match them by MSE."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from datakd.api.context import SetupContext, TermInputs
from datakd.losses import relations as R
from datakd.losses.base import register_loss
from datakd.losses.feature_connectors import HintRegressor
from datakd.losses.feature_taps import PairedFeatureTerm


@register_loss("fitnet")
class FitNet(PairedFeatureTerm):
    """FitNet hints: MSE between a conv-BN(-ReLU) regression of a student map and a teacher map."""

    def __init__(
        self,
        student: str | Sequence[str] = "stage2",
        teacher: str | Sequence[str] = "stage2",
        relu: bool = True,
    ) -> None:
        # RepDistiller's hint layer 2 is the output of the second stage for every CIFAR zoo model.
        super().__init__(student, teacher)
        self.relu = relu
        self.regressors = nn.ModuleList()

    def build(self, ctx: SetupContext) -> None:
        self.regressors = nn.ModuleList(
            HintRegressor(s, t, self.relu) for s, t in zip(self.student_shapes, self.teacher_shapes)
        )

    def forward(self, inputs: TermInputs) -> torch.Tensor:
        total = inputs.student_logits.new_zeros(())
        for (fs, ft), regressor in zip(self.pairs(inputs), self.regressors):
            out = regressor(fs)
            if regressor.pool_target:
                ft = F.adaptive_avg_pool2d(ft, out.shape[-2:])
            total = total + R.hint_loss(out, ft)
        return total
