"""The trainer's loss for one fixed batch equals the method's formula, recomputed here in float64.

TL (seed 001): total = 0.1·CE(s(x), y) + 0.9·KD(s(x), t(x)) + α·KD(s(x′), t(x′)), the mixed view x′
supervised by the teacher's logits *on x′* (not the λ-mixed teacher logits of x and its partner).
TST (seed 000): the Stage III step trains on [x̂ ‖ x] with labels [y ‖ y]; its loss equals ½·loss on x̂ +
½·loss on x, the authors' split, with both halves taken from the one 2B forward (BatchNorm sees 2B images).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from datakd.augmenters import tl as tl_module
from datakd.engine.build import build_trainer
from tests.helpers import tiny_config
from tests.mechanism import ce64, first_step, kd64

RGB32 = {"pad_to_32": True, "rgb": True}
TAU = 4.0
ALPHA = 0.7  # the mixed view's KD weight, distinct from the 0.9 on the main view


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("numeric-teacher") / "run"
    cfg = tiny_config(out, epochs=1, data={"options": RGB32, "train_subset": 256}, student={"kwargs": {}})
    build_trainer(cfg, "train").fit()
    return out / "last.pt"


def test_tl_total_loss_and_teacher_labelled_mixed_view(
    tmp_path: Path, teacher: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mixes: list[tuple[torch.Tensor, torch.Tensor, float]] = []
    cutmix = tl_module.cutmix_batch

    def recording_cutmix(images, alpha, partners):
        mixes.append(out := cutmix(images, alpha, partners))
        return out

    monkeypatch.setattr(tl_module, "cutmix_batch", recording_cutmix)
    loss = {
        "ce": {"weight": 0.1},
        "kd": {"weight": 0.9, "temperature": TAU},
        "kd_mix": {"type": "kd", "views": ["mix"], "weight": ALPHA, "temperature": TAU},
    }
    cfg = tiny_config(
        tmp_path / "tl",
        data={"options": RGB32, "train_subset": 128},
        student={"kwargs": {}},
        teacher={"checkpoint": str(teacher)},
        loss=loss,
        augmenter={"name": "tlcutmix"},
    )
    seen = first_step(build_trainer(cfg, "distill"), monkeypatch)
    (main, mix), (s_x, s_mix), (t_x, t_mix) = seen["views"], seen["student"], seen["teacher"]
    y = seen["batch"].labels
    assert torch.equal(main.images, seen["batch"].images) and mix.labels is None
    (mixed, perm, lam), = mixes  # fmt: skip
    assert torch.equal(mix.images, mixed) and 0.0 < lam < 1.0

    expected = 0.1 * ce64(s_x, y) + 0.9 * kd64(s_x, t_x) + ALPHA * kd64(s_mix, t_mix)
    assert seen["total"] == pytest.approx(expected, rel=1e-5)
    assert seen["losses"]["kd_mix"] == pytest.approx(kd64(s_mix, t_mix), rel=1e-5)
    # Not the label-mixing of CutMix applied to teacher outputs: λ·t(x) + (1−λ)·t(x[perm]) (as logits or
    # as probabilities) gives a different loss.
    mixed_logits = lam * t_x + (1 - lam) * t_x[perm]
    assert abs(kd64(s_mix, mixed_logits) - kd64(s_mix, t_mix)) > 1e-3 * kd64(s_mix, t_mix)
    mixed_probs = lam * F.softmax(t_x.double() / TAU, 1) + (1 - lam) * F.softmax(t_x[perm].double() / TAU, 1)
    kd_probs = float(
        (mixed_probs * (mixed_probs.log() - F.log_softmax(s_mix.double() / TAU, 1))).sum(1).mean() * TAU**2
    )
    assert abs(kd_probs - kd64(s_mix, t_mix)) > 1e-3 * kd64(s_mix, t_mix)


def test_tst_stage3_loss_is_the_half_half_split(
    tmp_path: Path, teacher: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_config(
        tmp_path / "tst",
        data={"options": RGB32, "train_subset": 128},
        student={"kwargs": {}},
        teacher={"checkpoint": str(teacher)},
        loss={"ce": {"weight": 1.0}, "kd": {"weight": 0.5, "temperature": TAU}},
        augmenter={"name": "tst", "prior": False},  # unfitted encoders: f_DE still changes the images
    )
    seen = first_step(build_trainer(cfg, "distill"), monkeypatch)
    (view,), (s,), (t,) = seen["views"], seen["student"], seen["teacher"]
    x, y = seen["batch"].images, seen["batch"].labels
    b = len(y)
    assert view.images.shape[0] == 2 * b
    assert torch.equal(view.images[b:], x) and not torch.equal(view.images[:b], x)  # [x̂ ‖ x]
    assert torch.equal(view.labels, torch.cat([y, y]))  # x̂ keeps the original label

    def half(lo: int, hi: int) -> float:
        return ce64(s[lo:hi], y) + 0.5 * kd64(s[lo:hi], t[lo:hi])

    expected = 0.5 * half(0, b) + 0.5 * half(b, 2 * b)
    assert seen["total"] == pytest.approx(expected, rel=1e-5)
    assert not torch.allclose(s[:b], s[b:], atol=1e-4)  # the halves are different inputs to the student
