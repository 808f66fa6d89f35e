"""Stage II (spec §1.7): tune θ_p, θ_m so that the frozen teacher still recognises x̂ but the frozen student
does not, by minimising α·CE(teacher(x̂)) + β·(−log(1 − p_S(y|x̂) + 1e-8)).

Per call: a fresh SGD (lr 0.01, momentum 0.9, no weight decay) over θ (plus the encoders' weights in the
"unfrozen" ablation), one optimizer step per batch, and ALRS decaying the lr after each pass over the
training loader. Gradient-norm clipping is opt-in (`clip_grad_norm`): an older version of the authors' code
clipped at 10, the pinned commit (f9616a2) does not. The student is in eval mode with its weights frozen;
the gradient reaches θ through the images (the meta-encoders are differentiable in their magnitude) and
through the gates.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from datakd.api import distributed as D
from datakd.augmenters.tst.policy import TSTPolicy
from datakd.losses.functional import tst_search_loss


class ALRS:
    """Adaptive learning-rate scheduling (Chen et al. 2022) as the TST code uses it.

    After each Stage II pass with mean loss ℓ: δ = ℓ_prev − ℓ; when the loss has plateaued — δ < 0.02 and
    |δ / (ℓ_prev − 1e-6)| < 0.02 — every group's lr is multiplied by 0.9. Then ℓ_prev ← ℓ (initially 999,
    so the first pass never decays). A loss that rises (δ < 0) decays only if it rises by less than 2 %.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        threshold: float = 0.02,
        ratio: float = 0.02,
        decay: float = 0.9,
    ) -> None:
        self.optimizer = optimizer
        self.threshold = threshold
        self.ratio = ratio
        self.decay = decay
        self.last_loss = 999.0

    def step(self, loss: float) -> bool:
        """Record a pass's mean loss; returns True when the lr was decayed."""
        delta = self.last_loss - loss
        decayed = delta < self.threshold and abs(delta / (self.last_loss - 1e-6)) < self.ratio
        if decayed:
            for group in self.optimizer.param_groups:
                group["lr"] *= self.decay
        self.last_loss = float(loss)
        return decayed

    def state_dict(self) -> dict[str, Any]:
        return {"last_loss": self.last_loss}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_loss = float(state["last_loss"])


def search_step(
    policy: TSTPolicy,
    student: nn.Module,
    teacher: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    alpha: float = 1.0,
    beta: float = 1.0,
    clip_grad_norm: float | None = None,
    autocast: Callable[[], Any] | None = None,
) -> torch.Tensor:
    """One Stage II update on one batch; returns the (detached) loss. Both networks must be frozen."""
    x_hat = policy(images, random=True)
    context = autocast() if autocast is not None else contextlib.nullcontext()
    with context:
        s_logits = student(x_hat)
        t_logits = teacher(x_hat)
    loss = tst_search_loss(s_logits, t_logits, labels, alpha, beta)
    search_update(loss, optimizer, clip_grad_norm)
    return loss.detach()


def search_update(loss: torch.Tensor, optimizer: torch.optim.Optimizer, clip_grad_norm: float | None) -> None:
    """One SGD step of θ on a Stage II loss (any task's objective), θ's gradient averaged over ranks."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    world = D.world_size()
    if world > 1:  # θ is replicated on every rank: average its gradient like DDP would
        for p in params:
            if p.grad is not None:
                p.grad = D.all_reduce_sum(p.grad) / world
    if clip_grad_norm:
        nn.utils.clip_grad_norm_(params, clip_grad_norm)
    optimizer.step()


class frozen_student:
    """Context: the student in eval mode with no parameter requiring grad; both restored on exit."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.flags: list[tuple[nn.Parameter, bool]] = []
        self.was_training = model.training

    def __enter__(self) -> nn.Module:
        self.flags = [(p, p.requires_grad) for p in self.model.parameters()]
        self.was_training = self.model.training
        self.model.eval()
        self.model.requires_grad_(False)
        return self.model

    def __exit__(self, *exc: object) -> None:
        for p, flag in self.flags:
            p.requires_grad_(flag)
        self.model.train(self.was_training)


def parameter_list(policy: TSTPolicy, train_encoders: bool) -> list[nn.Parameter]:
    """What Stage II optimises: θ_p, θ_m, and every encoder weight when the encoders are not frozen."""
    params: Iterable[nn.Parameter] = [policy.prob_logits, policy.mag_logits]
    if train_encoders:
        params = [*params, *policy.encoders.parameters()]
    return list(params)
