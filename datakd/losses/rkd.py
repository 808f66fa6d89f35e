"""Relational knowledge distillation (Park et al. 2019): distance and angle relations of a batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from datakd.api.context import TermInputs
from datakd.errors import DatakdError
from datakd.losses import relations as R
from datakd.losses.base import register_loss
from datakd.losses.feature_taps import PairedFeatureTerm


@register_loss("rkd")
class RelationalKD(PairedFeatureTerm):
    """RKD: Huber loss on mean-normalised pairwise distances (×25) and triplet angles (×50)."""

    def __init__(
        self,
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
        student: str | Sequence[str] = "pre_logits",
        teacher: str | Sequence[str] = "pre_logits",
    ) -> None:
        super().__init__(student, teacher)
        if distance_weight < 0 or angle_weight < 0:
            raise DatakdError(
                "rkd.distance_weight and rkd.angle_weight must be >= 0, "
                f"got {distance_weight} and {angle_weight}"
            )
        self.distance_weight, self.angle_weight = float(distance_weight), float(angle_weight)

    def forward(self, inputs: TermInputs) -> torch.Tensor:
        # A batch of one has no pair: both parts are 0 by construction (see relations.normalized_distances).
        total = inputs.student_logits.new_zeros(())
        for fs, ft in self.pairs(inputs):
            distance = R.rkd_distance_loss(fs, ft)
            angle = R.rkd_angle_loss(fs, ft) if self.angle_weight else distance * 0.0
            inputs.log(f"{self.term_name}_distance", distance.detach())
            inputs.log(f"{self.term_name}_angle", angle.detach())
            total = total + self.distance_weight * distance + self.angle_weight * angle
        return total
