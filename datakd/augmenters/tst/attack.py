"""TST's Table 7 "Attack" encoder: the images themselves are what Stage II optimises.

The paper's ablation replaces f_DE by "direct manipulation of samples in a form similar to PGD", with
Stage II and Stage III alternating once each. Here, every training step first runs `steps` signed-gradient
steps on the batch (Stage II: minimise TST's Eq. 2, α·CE(teacher(x̂), y) + β·(−log(1 − p_S(y|x̂))), both
networks frozen, student in eval mode) inside an L∞ ball of `epsilon` pixel units, then trains on
[x̂ ‖ x] with labels [y ‖ y] exactly as the `tst` augmenter's Stage III does. Nothing persists between
steps (a per-image perturbation would have to be stored for the whole data set; the paper does not say).
"""

from __future__ import annotations

import torch

from datakd.adversarial import PixelBox, pgd
from datakd.api.context import SetupContext, StepContext, View
from datakd.augmenters.base import Augmenter, register_augmenter
from datakd.augmenters.tst.search import frozen_student
from datakd.data.loaders import Batch
from datakd.errors import ConfigError, DatakdError
from datakd.losses.functional import tst_search_loss


@register_augmenter("tst_attack")
class TSTAttack(Augmenter):
    """TST Table 7 "Attack": per step, a PGD search of x̂ against Eq. 2, then Stage III on [x̂ ‖ x]."""

    view_names = ("main",)

    def __init__(
        self,
        epsilon: float = 8 / 255,
        steps: int = 1,
        step_size: float | None = None,
        random_start: bool = True,
        alpha: float = 1.0,
        beta: float = 1.0,
    ) -> None:
        super().__init__()
        if not 0 <= epsilon <= 1 or steps < 1 or alpha < 0 or beta < 0:
            raise ConfigError(
                "tst_attack: need 0 <= epsilon <= 1 (pixel units), steps >= 1, alpha, beta >= 0; got "
                f"epsilon={epsilon}, steps={steps}, alpha={alpha}, beta={beta}"
            )
        self.epsilon, self.steps, self.step_size = epsilon, steps, step_size
        self.random_start = random_start
        self.alpha, self.beta = alpha, beta
        self.box: PixelBox | None = None

    def setup(self, ctx: SetupContext) -> None:
        if ctx.teacher is None:
            raise ConfigError("augmenter tst_attack needs a teacher: run with `datakd distill`")
        self.box = PixelBox.from_mean_std(ctx.mean, ctx.std, ctx.device)

    def forward(self, batch: Batch, ctx: StepContext) -> list[View]:
        if self.box is None or ctx.teacher is None:
            raise DatakdError("the tst_attack augmenter was used before setup() or without a teacher")
        teacher = ctx.teacher
        labels = batch.labels

        def objective(x: torch.Tensor) -> torch.Tensor:
            with ctx.autocast():
                s_logits, t_logits = student(x), teacher(x)
            return -tst_search_loss(s_logits.float(), t_logits.float(), labels, self.alpha, self.beta)

        # the bare module: gradients flow to the images only, never through DDP's parameter hooks
        with frozen_student(getattr(ctx.student, "module", ctx.student)) as student:
            x_hat = pgd(
                batch.images, objective, self.box, self.epsilon, self.steps, self.step_size, self.random_start
            )
            with torch.no_grad():  # Eq. 2 at x̂ (eval-mode student), a column of metrics.csv
                ctx.log("attack_search_loss", -objective(x_hat))
        images = torch.cat([x_hat.to(batch.images.dtype), batch.images])
        labels2 = torch.cat([labels, labels])
        indices = torch.cat([batch.indices, batch.indices])
        return [View("main", images, labels2, indices=indices)]
