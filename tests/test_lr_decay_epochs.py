"""schedule.decay_epochs: cosine/linear reach eta_min after that many epochs, then stay (EffDstl stage 1)."""

from __future__ import annotations

import math

import pytest

from datakd.config import ScheduleConfig
from datakd.engine.optim import LRSchedule
from datakd.errors import ConfigError


def test_cosine_reaches_floor_at_decay_epochs_then_stays() -> None:
    # EffDstl stage 1 in miniature: lr 0.5 → 1e-5 over 8 of 10 epochs, 4 iterations per epoch.
    cfg = ScheduleConfig(name="cosine", eta_min=1e-5, decay_epochs=8)
    schedule = LRSchedule(cfg, steps_per_epoch=4, total_epochs=10, base_lr=0.5)
    floor = 1e-5 / 0.5
    for step in range(0, 40):
        t = min(step / 4 / 8, 1.0)
        expected = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
        assert schedule.factor(step) == pytest.approx(expected, rel=1e-12), step
    assert schedule.factor(32) == pytest.approx(floor) and schedule.factor(39) == pytest.approx(floor)


def test_decay_epochs_counts_from_a_restart_and_scales() -> None:
    restarted = LRSchedule(ScheduleConfig(name="linear", decay_epochs=2), 10, 10, base_lr=1, start_epoch=6)
    assert restarted.factor(60) == 1.0 and restarted.factor(70) == pytest.approx(0.5)
    assert restarted.factor(80) == pytest.approx(0.0, abs=1e-12) and restarted.factor(99) == 0.0
    scaled = LRSchedule(ScheduleConfig(name="linear", decay_epochs=2, scale=2), 10, 20, base_lr=1)
    assert scaled.factor(20) == pytest.approx(0.5)  # 4 scaled epochs of decay
    unset = LRSchedule(ScheduleConfig(name="linear"), 10, 10, base_lr=1)
    assert unset.factor(50) == pytest.approx(0.5)  # default: decay over the whole run


def test_non_positive_decay_epochs_is_rejected() -> None:
    with pytest.raises(ConfigError, match="decay_epochs must be positive, got 0"):
        LRSchedule(ScheduleConfig(name="cosine", decay_epochs=0), 10, 10, base_lr=1)
