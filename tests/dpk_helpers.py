"""Small builders for the DPK tests: a dummy setup context, tiny two-stage nets, one term call."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import nn

from datakd.api.context import SetupContext, TermInputs, View, record
from datakd.data.loaders import Normalizer
from datakd.losses.base import build_terms
from datakd.losses.dpk import DynamicPriorKnowledge
from tests.helpers import setup_context


class TwoStage(nn.Module):
    """conv (stage1, full resolution) → stride-2 conv (stage2) → pooled linear head; named taps."""

    def __init__(self, c1: int, c2: int, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.fc = nn.Linear(c2, num_classes)
        self.datakd_taps = {"stage1": "conv1", "stage2": "conv2"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def context(
    student: nn.Module, teacher: nn.Module, sample: torch.Tensor, batch_size: int = 8, epochs: int = 10
) -> SetupContext:
    channels = sample.shape[1]
    return setup_context(
        student,
        teacher,
        sample[:2],
        num_classes=10,
        mean=(0.0,) * channels,
        std=(1.0,) * channels,
        batch_size=batch_size,
        total_epochs=epochs,
        normalizer=Normalizer((0.0,) * channels, (1.0,) * channels, torch.device("cpu")),
    )


def make_term(
    s_model: nn.Module, t_model: nn.Module, sample: torch.Tensor, /, batch_size: int = 8, **options: Any
) -> DynamicPriorKnowledge:
    """A dpk term built from recipe-style `options` and set up on the two models."""
    (term,) = build_terms({"dpk": {"weight": 0.2, **options}})
    term.setup(context(s_model, t_model, sample, batch_size))
    assert isinstance(term, DynamicPriorKnowledge)
    return term


def term_inputs(
    s_feats: dict[str, torch.Tensor],
    t_feats: dict[str, torch.Tensor],
    epoch: int = 0,
    total_epochs: int = 10,
    logs: dict[str, list[float]] | None = None,
) -> TermInputs:
    batch = next(iter(s_feats.values())).shape[0]
    view = View("main", torch.zeros(batch, 1, 1, 1), torch.zeros(batch, dtype=torch.long))
    logits = torch.zeros(batch, 10)

    def log(name: str, value: Any, count: float = 1) -> None:
        if logs is not None:
            logs[name].append(float(value))

    return TermInputs(view, logits, logits, s_feats, t_feats, epoch, 0, 0, 1, total_epochs, None, log)


def forward(
    term: DynamicPriorKnowledge,
    student: nn.Module,
    teacher: nn.Module,
    images: torch.Tensor,
    epoch: int = 0,
    total_epochs: int = 10,
) -> tuple[torch.Tensor, dict[str, list[float]]]:
    """One term call on real forward passes (teacher without grad, as the trainer runs it)."""
    logs: dict[str, list[float]] = defaultdict(list)
    _, s_feats = record(student, images, term.student_taps)
    with torch.no_grad():
        _, t_feats = record(teacher, images, term.teacher_taps)
    return term(term_inputs(s_feats, t_feats, epoch, total_epochs, logs)), logs
