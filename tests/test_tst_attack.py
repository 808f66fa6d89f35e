"""TST Table 7 "Attack": the shared FGSM/PGD helpers against hand-derived results, and the `tst_attack`
augmenter's mechanism on real data (x̂ stays in its ε-ball, lowers Eq. 2 relative to the clean batch, leaves
the student's weights and BN statistics alone) plus a short run through the trainer."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from datakd.adversarial import PixelBox, fgsm, pgd
from datakd.api.context import StepContext
from datakd.engine.build import build_trainer
from datakd.engine.metrics import read_metrics
from datakd.errors import ConfigError
from datakd.losses.functional import tst_search_loss
from tests.tst_helpers import RGB32, tst_config, tst_teacher

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.5)


def test_fgsm_on_a_linear_objective_is_the_signed_step_clipped_to_the_image_range() -> None:
    box = PixelBox.from_mean_std(MEAN, STD)
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(2, 3, 4, 4, generator=g)  # in [0, 1]
    pixels[0, 0, 0, 0], pixels[0, 1, 0, 0] = 0.99, 0.01  # near the top / bottom of the range
    x = (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    w = torch.randn(2, 3, 4, 4, generator=g)
    w[0, 0, 0, 0], w[0, 1, 0, 0] = 1.0, -1.0  # push those two out of the range
    eps = 8 / 255
    out = fgsm(x, lambda z: (w * z).sum(), box, eps)
    # independent computation in pixel space: p + ε·sign(w), clipped to [0, 1], then normalised
    expected_pixels = (pixels + eps * w.sign()).clamp(0, 1)
    expected = (expected_pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    assert out[0, 0, 0, 0] == pytest.approx((1 - MEAN[0]) / STD[0])  # clipped at pixel value 1
    assert out[0, 1, 0, 0] == pytest.approx(-MEAN[1] / STD[1])  # clipped at pixel value 0
    assert not out.requires_grad


def test_pgd_climbs_towards_a_target_inside_its_ball_and_stops_at_the_ball() -> None:
    box = PixelBox.from_mean_std((0.0,), (1.0,))  # normalised = pixel units, range [0, 1]
    x = torch.full((1, 1, 2, 2), 0.5)
    target = torch.tensor([0.52, 0.45, 0.9, 0.1]).view(1, 1, 2, 2)
    eps = 0.1
    out = pgd(x, lambda z: -((z - target) ** 2).sum(), box, eps, steps=40, step_size=0.005)
    # the maximiser of −‖z − target‖² over the ball: target clipped to [x − ε, x + ε]
    expected = target.clamp(0.4, 0.6)
    torch.testing.assert_close(out, expected, rtol=0, atol=0.006)
    assert (out - x).abs().max() <= eps + 1e-6
    with pytest.raises(ConfigError, match="steps >= 1"):
        pgd(x, lambda z: z.sum(), box, eps, steps=0)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tst_teacher(tmp_path_factory)


def attack_config(out: Path, teacher: Path, **augmenter: object):
    """A 1-epoch TST test run (ResNet-14 -> ResNet-8, CE + KD) with the Attack encoder, no Stage II."""
    data = {"options": RGB32, "train_subset": 256}
    cfg = tst_config(out, teacher, None, events=[], epochs=1, data=data, schedule={"milestones": [1]})
    return replace(cfg, augmenter={"name": "tst_attack", **augmenter})


def test_attack_view_lowers_eq2_inside_the_ball_without_touching_the_student(
    teacher: Path, tmp_path: Path
) -> None:
    trainer = build_trainer(attack_config(tmp_path / "run", teacher, random_start=False), "distill")
    batch = next(iter(trainer.loader.epoch(0)))
    student = trainer.student
    before = {k: v.clone() for k, v in student.state_dict().items()}
    ctx = StepContext(0, 0, 0, 1, 1, student, trainer.teacher, trainer.meters, trainer.autocast)
    (view,) = trainer.augmenter(batch, ctx)
    b = len(batch)
    assert view.images.shape[0] == 2 * b and torch.equal(view.images[b:], batch.images)
    assert torch.equal(view.labels, torch.cat([batch.labels, batch.labels]))
    x_hat = view.images[:b]
    unit = trainer.augmenter.box.unit  # 1/std per channel (PixelBox is checked above)
    assert ((x_hat - batch.images).abs() <= 8 / 255 * unit + 1e-5).all()
    assert not torch.equal(x_hat, batch.images)
    # the student is untouched: weights, BN running statistics, train mode, no gradients
    assert student.training and all(p.grad is None for p in student.parameters())
    for key, value in student.state_dict().items():
        assert torch.equal(value, before[key]), key

    student.eval()
    with torch.no_grad():
        clean = tst_search_loss(student(batch.images), trainer.teacher(batch.images), batch.labels)
        attacked = tst_search_loss(student(x_hat), trainer.teacher(x_hat), batch.labels)
    student.train()
    assert attacked < clean - 0.05, (float(clean), float(attacked))


def test_attack_run_trains_and_logs_the_search_loss(teacher: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    build_trainer(attack_config(out, teacher), "distill").fit()
    rows = read_metrics(out / "metrics.csv")
    assert len(rows) == 1 and all("attack_search_loss" in r and r["attack_search_loss"] > 0 for r in rows)


def test_bad_attack_settings_fail_with_one_line() -> None:
    from datakd.augmenters.base import build_augmenter

    with pytest.raises(ConfigError, match="epsilon=2"):
        build_augmenter({"name": "tst_attack", "epsilon": 2})
