"""Optimizers and learning-rate schedules.

The schedule is a pure function of the global iteration (plus the epoch it started at), so resuming
needs no scheduler state beyond the config, and a stage event can restart it from any epoch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from datakd.config import OptimConfig, ScheduleConfig, _build
from datakd.errors import ConfigError, choice_error

OPTIMIZERS = ("sgd", "adamw", "adam")
SCHEDULES = ("multistep", "step", "cosine", "linear", "poly", "constant")


def split_decay(params: list[tuple[str, nn.Parameter]], no_decay_norm_bias: bool) -> tuple[list, list]:
    """(decayed, not decayed) parameters; biases and 1-d (normalisation) weights are exempt if asked."""
    decay, no_decay = [], []
    for _name, p in params:
        if not p.requires_grad:
            continue
        (no_decay if no_decay_norm_bias and p.ndim <= 1 else decay).append(p)
    return decay, no_decay


def build_optimizer(
    cfg: OptimConfig, named_params: list[tuple[str, nn.Parameter]], lr_scale: float = 1.0
) -> torch.optim.Optimizer:
    if cfg.name not in OPTIMIZERS:
        raise choice_error("optimizer", cfg.name, OPTIMIZERS)
    decay, no_decay = split_decay(named_params, cfg.no_decay_norm_bias)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    lr = cfg.lr * lr_scale
    for group in groups:
        group["initial_lr"] = lr
    if cfg.name == "sgd":
        return torch.optim.SGD(
            groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0
        )
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=cfg.betas, eps=cfg.eps)
    return torch.optim.Adam(groups, lr=lr, betas=cfg.betas, eps=cfg.eps)


def merge_section(base: Any, changes: dict[str, Any], where: str) -> Any:
    """A copy of dataclass `base` with `changes` applied and validated (for stage-event rebuilds)."""
    values = dataclasses.asdict(base)
    values.update(changes)
    return _build(type(base), values, where)


class LRSchedule:
    """Learning-rate factor as a function of the global iteration."""

    def __init__(
        self,
        cfg: ScheduleConfig,
        steps_per_epoch: int,
        total_epochs: int,
        base_lr: float,
        start_epoch: int = 0,
    ) -> None:
        if cfg.name not in SCHEDULES:
            raise choice_error("schedule", cfg.name, SCHEDULES)
        if cfg.decay_epochs is not None and cfg.decay_epochs <= 0:
            raise ConfigError(f"schedule.decay_epochs must be positive, got {cfg.decay_epochs}")
        self.cfg = cfg
        self.steps_per_epoch = max(steps_per_epoch, 1)
        self.total_epochs = total_epochs
        self.base_lr = base_lr
        self.start_epoch = start_epoch

    def factor(self, global_step: int) -> float:
        cfg = self.cfg
        epoch_float = global_step / self.steps_per_epoch
        since = epoch_float - self.start_epoch
        if cfg.warmup_epochs > 0 and since < cfg.warmup_epochs:
            frac = since / cfg.warmup_epochs
            return cfg.warmup_start_factor + (1.0 - cfg.warmup_start_factor) * frac
        epoch = math.floor(epoch_float + 1e-9)
        if cfg.name == "multistep":
            passed = sum(1 for m in cfg.milestones if epoch >= round(m * cfg.scale))
            return cfg.gamma**passed
        if cfg.name == "step":
            return cfg.gamma ** ((epoch - self.start_epoch) // max(round(cfg.step_size * cfg.scale), 1))
        if cfg.name == "constant":
            return 1.0
        end = self.total_epochs
        if cfg.decay_epochs is not None:
            end = self.start_epoch + cfg.decay_epochs * cfg.scale
        span = max(end - self.start_epoch - cfg.warmup_epochs, 1e-9)
        t = min(max(since - cfg.warmup_epochs, 0.0) / span, 1.0)
        floor = cfg.eta_min / self.base_lr if self.base_lr > 0 else 0.0  # eta_min is an absolute lr
        if cfg.name == "cosine":
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))
        if cfg.name == "poly":  # mmseg's poly: (lr - eta_min)·(1 - t)^power + eta_min, per iteration
            return floor + (1.0 - floor) * (1.0 - t) ** cfg.power
        return floor + (1.0 - floor) * (1.0 - t)  # linear

    def apply(self, optimizer: torch.optim.Optimizer, global_step: int) -> float:
        factor = self.factor(global_step)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        return optimizer.param_groups[0]["lr"]
