"""The detector's own training losses as a loss term: the supervised part of every detection recipe.

torchvision detectors compute their losses inside their forward (RPN and box head for R-CNNs, focal and
box losses for RetinaNet, plus centerness for FCOS); the detection task hands them over in
`student_outputs["losses"]`. This term sums them and logs each one as `det_<name>` (torchvision's name
without its `loss_` prefix, e.g. `det_classifier`, `det_rpn_box_reg`, `det_bbox_regression`).
"""

from __future__ import annotations

import torch

from datakd.api.context import TermInputs
from datakd.errors import ConfigError
from datakd.losses.base import LossTerm, register_loss


@register_loss("detector")
class DetectorLoss(LossTerm):
    """The student detector's own losses (torchvision's loss dict), summed; each logged as det_<name>."""

    tasks = ("detection",)

    needs_teacher = False
    needs_labels = False  # the detection targets travel in the view's annotations, not in labels

    def forward(self, inputs: TermInputs) -> torch.Tensor:
        losses = inputs.student_outputs.get("losses")
        if not losses:
            raise ConfigError(
                "detector: the student returned no loss dict; this term is for task: detection only"
            )
        total = None
        for name, value in losses.items():
            inputs.log(f"det_{name.removeprefix('loss_')}", value.detach())
            total = value if total is None else total + value
        return total
