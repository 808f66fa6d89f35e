"""Seed 001 methods in the real training loop on the embedded Fashion-MNIST subset.

KD+TLCutMix+pick learns and logs the pick ratio, resuming mid-epoch is bit-identical with the pick
augmenter (it draws from the global RNG and scores with the student), the other augmenters run, and a
label-based term on a teacher-labelled view fails clearly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from datakd.checkpoint import load_checkpoint
from datakd.engine.build import build_trainer
from datakd.engine.metrics import read_metrics
from datakd.errors import DatakdError
from datakd.plots.base import PLOTS
from tests.helpers import crash_and_resume, tiny_config

KD_MAIN = {"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "temperature": 4.0}}
KD_MIX = {"kd_mix": {"type": "kd", "views": ["mix"], "weight": 0.9, "temperature": 4.0}}


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ResNet-14 teacher trained 3 epochs on 1,024 real images (about 55 % top-1)."""
    out = tmp_path_factory.mktemp("tl-teacher") / "run"
    cfg = tiny_config(
        out,
        epochs=3,
        data={"train_subset": 1024},
        student={"name": "resnet14", "kwargs": {"in_channels": 1}},
        optim={"lr": 0.1},
        schedule={"milestones": [2]},
    )
    build_trainer(cfg, "train").fit()
    return out / "last.pt"


def tl_config(out: Path, teacher: Path, augmenter: dict, loss: dict | None = None, **changes):
    return tiny_config(
        out,
        teacher={"checkpoint": str(teacher)},
        loss=loss if loss is not None else {**KD_MAIN, **KD_MIX},
        augmenter=augmenter,
        **changes,
    )


def test_pick_student_learns_and_logs_the_ratio(tmp_path: Path, teacher_ckpt: Path) -> None:
    run = tmp_path / "pick"
    cfg = tl_config(
        run,
        teacher_ckpt,
        {"name": "tlcutmix_pick"},
        epochs=2,
        data={"train_subset": 1024},
        schedule={"milestones": [2]},
    )
    summary = build_trainer(cfg, "distill").fit()
    # 10 balanced classes (chance 10 %); the teacher is at about 55 %.
    assert summary["top1_last"] > 30.0
    rows = read_metrics(run / "metrics.csv")
    assert all("pick_kl_ratio" in r and r["pick_kl_ratio"] >= 1.0 for r in rows)
    assert all("loss_kd_mix" in r for r in rows)
    assert rows[-1]["loss_kd_mix"] < rows[0]["loss_kd_mix"], "the student fits the teacher on the mixed view"
    pngs = PLOTS.get("pick")(run, tmp_path / "plots")
    assert [p.name for p in pngs] == ["pick_ratio.png"] and pngs[0].stat().st_size > 0


def test_resume_mid_epoch_with_pick_is_bit_identical(tmp_path: Path, teacher_ckpt: Path, monkeypatch) -> None:
    augmenter = {"name": "tlcutmix_pick", "score_mode": "train"}
    data = {"train_subset": 256}  # 4 steps per epoch
    reference = tmp_path / "reference"
    build_trainer(tl_config(reference, teacher_ckpt, augmenter, data=data), "distill").fit()

    crashed = tmp_path / "crashed"
    engine = {"checkpoint_every_iters": 2, "tensorboard": False}
    cfg = tl_config(crashed, teacher_ckpt, augmenter, data=data, engine=engine)
    # crash at step 8: the last of epoch 2; the checkpoint after global step 6 is the last
    state, _ = crash_and_resume(cfg, "distill", 8, monkeypatch)
    assert (state["epoch"], state["step"]) == (1, 2)
    a, b = load_checkpoint(reference / "last.pt")["model"], load_checkpoint(crashed / "last.pt")["model"]
    assert a.keys() == b.keys()
    for key in a:  # BN running statistics included: train-mode scoring updates them
        assert torch.equal(a[key], b[key]), key
    ref_rows, rows = read_metrics(reference / "metrics.csv"), read_metrics(crashed / "metrics.csv")
    assert len(rows) == 2
    assert [r["pick_kl_ratio"] for r in rows] == [r["pick_kl_ratio"] for r in ref_rows]


@pytest.mark.parametrize(
    "augmenter,loss",
    [
        ({"name": "tlmixup"}, {**KD_MAIN, **KD_MIX}),
        ({"name": "tlcutmix"}, {**KD_MAIN, **KD_MIX}),
        ({"name": "cutmix_ce"}, {**KD_MAIN, "ce_mix": {"type": "ce", "views": ["mix"], "weight": 0.9}}),
        ({"name": "cutout", "size": 8}, KD_MAIN),
        ({"name": "tlcutout", "size": 8}, {**KD_MAIN, **KD_MIX}),
        (
            {"name": "tlcutmix_pick", "criterion": "student_entropy", "score_mode": "eval"},
            {**KD_MAIN, **KD_MIX},
        ),
    ],
)
def test_augmenters_train_one_epoch(tmp_path: Path, teacher_ckpt: Path, augmenter: dict, loss: dict) -> None:
    cfg = tl_config(tmp_path / "run", teacher_ckpt, augmenter, loss, epochs=1, data={"train_subset": 128})
    summary = build_trainer(cfg, "distill").fit()
    assert summary["epochs"] == 1
    row = read_metrics(tmp_path / "run" / "metrics.csv")[0]
    for name in loss:
        assert row[f"loss_{name}"] > 0


def test_label_terms_cannot_supervise_the_teacher_labelled_view(tmp_path: Path, teacher_ckpt: Path) -> None:
    loss = {**KD_MAIN, "ce_mix": {"type": "ce", "views": ["mix"], "weight": 0.9}}
    cfg = tl_config(tmp_path / "run", teacher_ckpt, {"name": "tlcutmix"}, loss, data={"train_subset": 128})
    with pytest.raises(DatakdError, match="needs labels"):
        build_trainer(cfg, "distill").fit()
