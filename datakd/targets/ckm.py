"""EffDstl's consistent knowledge mining (stage 2): keep distilling the teacher, except where it is
correct but less confident on the label than the student — there distil a 0.99-smoothed label instead.

Used with a ``kd`` term at temperature 1 (``form: soft_ce, scale_tau2: false``): that term asks for
``soft_targets(1.0)``, which is the student's temperature here; the teacher is always sharpened at
`teacher_temperature` (0.7), whatever the term asks for. The formula is
`datakd.targets.functional.knowledge_mining`.
"""

from __future__ import annotations

import torch

from datakd.errors import ConfigError
from datakd.targets import functional as TF
from datakd.targets.base import TargetInputs, TargetTransform, register_target_transform
from datakd.targets.subsets import require_labels, subset_stats


@register_target_transform("ckm")
class ConsistentKnowledgeMining(TargetTransform):
    """EffDstl CKM: teacher at τ=0.7, but a 0.99-smoothed label where the teacher is right and less sure."""

    kind = "ckm"

    def __init__(
        self, teacher_temperature: float = 0.7, smoothing: float = 0.99, views: list[str] | None = None
    ) -> None:
        super().__init__(views)
        if not teacher_temperature > 0:
            raise ConfigError(f"ckm.teacher_temperature must be positive, got {teacher_temperature!r}")
        if not 0.0 < smoothing <= 1.0:
            raise ConfigError(f"ckm.smoothing (the label's share) must be in (0, 1], got {smoothing!r}")
        self.teacher_temperature = float(teacher_temperature)
        self.smoothing = float(smoothing)

    def forward(self, inputs: TargetInputs) -> torch.Tensor:
        labels = require_labels(inputs, self.kind)
        # σ_1(s/τ) = σ_τ(s): the comparison uses the student distribution the requesting term trains.
        student = inputs.student_logits.float() / inputs.temperature
        targets, mask = TF.knowledge_mining_with_mask(
            student, inputs.teacher_logits, labels, self.teacher_temperature, self.smoothing
        )
        teacher = torch.softmax(inputs.teacher_logits.float() / self.teacher_temperature, dim=1)
        masks = {
            "correct": TF.correct_mask(teacher, labels),
            "regularization": TF.regularization_mask(torch.softmax(student, dim=1), teacher, labels),
        }
        self.stats = subset_stats(masks, mask, targets, teacher)
        return targets

    def extra_repr(self) -> str:
        return f"teacher_temperature={self.teacher_temperature}, smoothing={self.smoothing}"
