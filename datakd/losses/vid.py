"""Variational information distillation (Ahn et al. 2019) on every stage pair."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from datakd.api.context import SetupContext, TermInputs
from datakd.api.features import ALL_STAGES
from datakd.errors import DatakdError
from datakd.losses import relations as R
from datakd.losses.base import register_loss
from datakd.losses.feature_connectors import VariationalRegressor
from datakd.losses.feature_taps import PairedFeatureTerm


@register_loss("vid")
class VariationalInformation(PairedFeatureTerm):
    """VID: Gaussian NLL of teacher stages under 1×1-conv means from the student, with learned variance."""

    def __init__(
        self,
        init_variance: float = 5.0,
        eps: float = 1e-5,
        student: str | Sequence[str] = ALL_STAGES,
        teacher: str | Sequence[str] = ALL_STAGES,
    ) -> None:
        super().__init__(student, teacher)
        if eps <= 0:
            raise DatakdError(f"vid.eps must be positive, got {eps}")
        self.init_variance, self.eps = float(init_variance), float(eps)
        if self.init_variance <= self.eps:
            raise DatakdError(f"vid.init_variance must exceed vid.eps ({eps}), got {init_variance}")
        self.regressors = nn.ModuleList()

    def build(self, ctx: SetupContext) -> None:
        regressors = []
        for s, t in zip(self.student_shapes, self.teacher_shapes):
            if len(s) != 3 or len(t) != 3:
                raise DatakdError(f"{self.label} needs C×H×W feature maps, got {list(s)} and {list(t)}")
            # RepDistiller: hidden width = teacher channels.
            regressors.append(VariationalRegressor(s[0], t[0], t[0], self.init_variance, self.eps))
        self.regressors = nn.ModuleList(regressors)

    def forward(self, inputs: TermInputs) -> torch.Tensor:
        total = inputs.student_logits.new_zeros(())
        for (fs, ft), regressor in zip(self.pairs(inputs), self.regressors):
            # Different resolutions: the larger map is average-pooled to the smaller (RepDistiller).
            fs, ft = R.match_spatial(fs, ft)
            total = total + R.gaussian_nll(regressor(fs), ft, regressor.variance())
        return total
