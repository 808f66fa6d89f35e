"""Deep mutual learning (Zhang et al., CVPR 2018), the DML baseline of role-wise KD's Tables 1 and 3.

Two networks learn together, each from the labels and from the other's predictions. Here the second
network (the *peer*) is a trainable module owned by this loss term, so it needs nothing beyond the
loss-term extension point: it joins the student's optimizer like any connector, is saved with the run's
loss-term state and is averaged across DDP ranks with the other extra parameters. Per batch, with
p = σ_T(student), q = σ_T(peer) on the view's images:

    value = T²·KL(sg(q) ‖ p)                      # the student mimics the peer (its CE is the `ce` term)
          + peer_ce·CE(peer, y) + T²·KL(sg(p) ‖ q)  # the peer's own DML loss

sg = stop-gradient, so the student's gradient is exactly DML's student loss minus its CE, and the
peer's exactly the peer's DML loss; one backward pass trains both. The peer starts from scratch (`init:
scratch`, the paper's two students) or as a copy of the run's teacher (`init: teacher`: role-kd's DML,
"the teacher is also updated"), or from `checkpoint`. The run's frozen teacher itself is never read.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from datakd.api.context import SetupContext, TermInputs
from datakd.errors import ConfigError, DatakdError, choice_error
from datakd.losses import functional as LF
from datakd.losses.base import LossTerm, register_loss

INITS = ("scratch", "teacher")


@register_loss("dml")
class DeepMutualLearning(LossTerm):
    """DML: a peer network trained with this term; student and peer each mimic the other (KL at T)."""

    needs_teacher = False
    needs_labels = True

    def __init__(
        self,
        peer: str | None = None,
        peer_kwargs: dict[str, Any] | None = None,
        init: str = "scratch",
        checkpoint: str | None = None,
        temperature: float = 1.0,
        peer_ce: float = 1.0,
    ) -> None:
        super().__init__()
        if init not in INITS:
            raise choice_error("dml.init", init, INITS, ConfigError)
        if temperature <= 0 or peer_ce < 0:
            raise ConfigError(f"dml: need temperature > 0 and peer_ce >= 0, got {temperature}, {peer_ce}")
        if init == "scratch" and peer is None and checkpoint is None:
            raise ConfigError("dml: name the peer network (dml.peer, e.g. resnet8) or give dml.checkpoint")
        self.peer_name, self.peer_kwargs = peer, dict(peer_kwargs or {})
        self.init, self.checkpoint = init, checkpoint
        self.temperature, self.peer_ce = float(temperature), float(peer_ce)
        self.peer: nn.Module | None = None

    def setup(self, ctx: SetupContext) -> None:
        if self.checkpoint is not None:
            from datakd.models.loading import load_model

            peer, _ = load_model(self.checkpoint, ctx.num_classes, self.peer_name, self.peer_kwargs)
        elif self.init == "teacher":
            if ctx.teacher is None:
                raise ConfigError("dml.init=teacher copies the run's teacher: run with `datakd distill`")
            peer = copy.deepcopy(ctx.teacher)
        else:
            from datakd.models import create

            kwargs = {"in_channels": int(ctx.sample_images.shape[1]), **self.peer_kwargs}
            peer = create(str(self.peer_name), ctx.num_classes, **kwargs)
        self.peer = peer.to(ctx.device).train().requires_grad_(True)

    def forward(self, inputs: TermInputs) -> torch.Tensor:
        if self.peer is None:
            raise DatakdError("the dml term was used before setup()")
        labels = inputs.labels
        if labels is None:
            raise DatakdError(
                f"loss term {self.term_name!r} needs labels, but view {inputs.view.name!r} has none"
            )
        t = self.temperature
        student = inputs.student_logits
        peer = self.peer(inputs.view.images)
        peer = peer if peer.dtype == torch.float64 else peer.float()  # float64 kept for checks
        p, q = F.softmax(student.detach() / t, dim=1), F.softmax(peer.detach() / t, dim=1)
        student_kl = LF.kl_to_targets(student, q, t)
        peer_ce = F.cross_entropy(peer, labels)
        peer_kl = LF.kl_to_targets(peer, p, t)
        inputs.log(f"{self.term_name}_student_kl", student_kl.detach())
        inputs.log(f"{self.term_name}_peer_ce", peer_ce.detach())
        inputs.log(f"{self.term_name}_peer_top1", peer.detach().argmax(1).eq(labels).float().mean() * 100)
        return student_kl + self.peer_ce * peer_ce + peer_kl

    def extra_repr(self) -> str:
        source = self.checkpoint or (self.peer_name if self.init == "scratch" else "teacher copy")
        return f"{super().extra_repr()}, peer={source}, temperature={self.temperature}"
