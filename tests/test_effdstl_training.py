"""EffDstl on real data (embedded Fashion-MNIST): stage 1 (CE_ls + WSL, weak teacher), then at epoch k the
built-in events switch to a stronger teacher of another architecture, rebuild the optimizer and move the
loss to consistent knowledge mining; resuming after the switch is bit-identical; the analysis transform
`replace` loads its second teacher and runs in a MEAL-V2-style (KD only) run.

Teachers and the reference run are module fixtures; the resume test restarts from a copy of the
reference run's mid-stage-2 checkpoint, so the file trains the student about 3.75 times in all.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from datakd.checkpoint import load_checkpoint
from datakd.engine.build import build_trainer
from datakd.engine.metrics import read_metrics
from datakd.engine.trainer import Trainer
from datakd.events.base import StageEvent, build_events
from tests.helpers import tiny_config, train_tiny_teacher
from tests.mechanism import ce_twin, teacher_kl

SWITCH = 2  # 0-indexed epoch at which stage 2 starts (of 3)
STAGE2_LR = 0.01  # a tenth of stage 1's peak, as in the paper (0.5 → 0.05)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A weak resnet8 (1 epoch, ~20 %) and a stronger resnet14 (3 cosine epochs, ~50 %), same tiny split."""
    root = tmp_path_factory.mktemp("teachers")
    weak = train_tiny_teacher(root / "weak", epochs=1, model="resnet8")
    strong_cfg = tiny_config(
        root / "strong",
        epochs=3,
        student={"name": "resnet14", "kwargs": {"in_channels": 1}},
        optim={"lr": 0.1},
        schedule={"name": "cosine"},
        engine={"eval_every": 3, "tensorboard": False},  # evaluate once, at the end
    )
    build_trainer(strong_cfg, "train").fit()
    return weak, root / "strong" / "last.pt"


def effdstl_config(out: Path, weak: Path, strong: Path, **changes: Any):
    """The ImageNet recipe's structure at toy scale (recipes/effdstl/imagenet/resnet18_effdstl.yaml)."""
    values: dict[str, Any] = {
        "epochs": 3,
        "engine": {"checkpoint_every_iters": 3, "eval_every": 3, "tensorboard": False},
        "teacher": {"checkpoint": str(weak)},
        "optim": {"lr": 0.1, "weight_decay": 4e-5},
        "schedule": {"name": "cosine", "eta_min": 1e-4, "decay_epochs": SWITCH},
        "loss": {
            "ce": {"weight": 1.0, "label_smoothing": 0.1},
            "wsl": {"weight": 0.5, "temperature": 2.0, "variant": "effdstl"},
            "ckm": {"type": "kd", "weight": 0.0, "temperature": 1.0, "scale_tau2": False, "form": "soft_ce"},
        },
        "target_transform": {"name": "ckm", "teacher_temperature": 0.7, "smoothing": 0.99},
        "events": [
            {
                "name": "switch_teacher",
                "at": SWITCH,
                "checkpoint": str(strong),
                "model": "resnet14",
                "optim": {"lr": STAGE2_LR, "weight_decay": 0.0},
                "schedule": {"name": "cosine", "eta_min": 5e-4, "decay_epochs": None},
            },
            {"name": "set_loss_weights", "at": SWITCH, "weights": {"ce": 0.0, "wsl": 0.0, "ckm": 1.0}},
        ],
    }
    values.update(changes)
    return tiny_config(out, **values)


class Probe(StageEvent):
    """Records the optimizer and run state before every step, and keeps a copy of the mid-stage-2
    checkpoint for the resume test (a test-only event)."""

    def __init__(self, snapshot: Path) -> None:
        self.seen: dict[tuple[int, int], dict[str, Any]] = {}
        self.snapshot = snapshot

    def on_step_start(self, trainer: Trainer, epoch: int, step: int) -> None:
        group = trainer.optimizer.param_groups[0]
        self.seen[(epoch, step)] = {
            "optimizer": id(trainer.optimizer),
            "momentum_buffers": len(trainer.optimizer.state),
            "lr": group["lr"],  # set by the previous step's schedule (or the fresh optimizer's lr)
            "weight_decay": group["weight_decay"],
            "teacher": trainer.teacher_source["name"],
            "weights": {t.term_name: t.weight for t in trainer.terms},
        }
        if (epoch, step) == (SWITCH, 2):  # checkpoint_every_iters=3 just wrote global step 18 = (2, 2)
            self.snapshot.mkdir(parents=True)
            shutil.copy(trainer.run_dir / "last.pt", self.snapshot / "last.pt")


@pytest.fixture(scope="module")
def reference(teachers: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory):
    weak, strong = teachers
    root = tmp_path_factory.mktemp("effdstl")
    cfg = effdstl_config(root / "reference", weak, strong)
    trainer = build_trainer(cfg, "distill")
    probe = Probe(root / "resumed")
    trainer.events.append(probe)
    summary = trainer.fit()
    return root / "reference", summary, probe


def test_stage_switch_rebuilds_optimizer_and_switches_loss_and_teacher(reference) -> None:
    out, summary, probe = reference
    last_step = max(step for epoch, step in probe.seen if epoch == SWITCH - 1)
    before = probe.seen[(SWITCH - 1, last_step)]
    first, second = probe.seen[(SWITCH, 0)], probe.seen[(SWITCH, 1)]
    assert before["teacher"] == "resnet8" and first["teacher"] == "resnet14"
    assert before["weights"] == {"ce": 1.0, "wsl": 0.5, "ckm": 0.0}
    assert first["weights"] == {"ce": 0.0, "wsl": 0.0, "ckm": 1.0}
    # A fresh optimizer: new object, no momentum buffers, stage-2 lr and weight decay.
    assert before["momentum_buffers"] > 0 and first["momentum_buffers"] == 0
    assert first["optimizer"] != before["optimizer"]
    assert before["weight_decay"] == 4e-5 and first["weight_decay"] == 0.0
    assert (
        before["lr"] < STAGE2_LR / 2 and first["lr"] == STAGE2_LR and second["lr"] == pytest.approx(STAGE2_LR)
    )
    state = load_checkpoint(out / "last.pt")
    assert state["loss_weights"] == {"ce": 0.0, "wsl": 0.0, "ckm": 1.0}
    assert state["optim_spec"]["start_epoch"] == SWITCH and state["optim_spec"]["optim"]["lr"] == STAGE2_LR
    assert state["teacher_source"]["name"] == "resnet14" and summary["teacher"] == "resnet14"


def test_losses_and_target_stats_are_logged_per_stage(reference) -> None:
    out, _, _ = reference
    rows = read_metrics(out / "metrics.csv")
    assert len(rows) == 3
    for row in rows[:SWITCH]:
        assert {"loss_ce", "loss_wsl"} <= row.keys() and "loss_ckm" not in row
        assert not any(key.startswith("target_") for key in row)
    last = rows[SWITCH]
    assert "loss_ckm" in last and "loss_ce" not in last and "loss_wsl" not in last
    fractions = {k: last[f"target_frac_{k}"] for k in ("correct", "regularization", "subset", "rewritten")}
    assert all(0.0 <= v <= 1.0 for v in fractions.values())
    assert 0.0 < fractions["subset"] <= min(fractions["correct"], fractions["regularization"])
    assert fractions["rewritten"] == pytest.approx(fractions["subset"], abs=1e-6)
    # The epoch's mean lr is that of the fresh cosine from STAGE2_LR to 5e-4 over this last epoch (8 steps).
    cosine = [5e-4 + (STAGE2_LR - 5e-4) * 0.5 * (1 + math.cos(math.pi * i / 8)) for i in range(8)]
    assert last["lr"] == pytest.approx(sum(cosine) / 8, rel=1e-5)


def test_mined_stage_moves_the_student_towards_the_strong_teacher(teachers, reference, tmp_path) -> None:
    """The mechanism of stage 2: distilling the strong teacher's mined targets makes the student predict
    like that teacher, more than training with (smoothed) labels alone for the same epochs does."""
    weak, strong = teachers
    out, _, _ = reference
    cfg = effdstl_config(tmp_path / "unused", weak, strong)
    labels_only = ce_twin(cfg, tmp_path / "ce", label_smoothing=0.1)
    ours = build_trainer(effdstl_config(out, weak, strong), "distill", resume=True)  # the finished run
    strong_teacher = ours.teacher  # switched in at epoch SWITCH and stored in the checkpoint
    assert ours.teacher_source["name"] == "resnet14"
    mine, theirs = teacher_kl(ours, strong_teacher, tau=1.0), teacher_kl(labels_only, strong_teacher, tau=1.0)
    print(f"KL to the strong teacher: EffDstl {mine:.4f}, CE only {theirs:.4f}")
    assert mine < theirs, (mine, theirs)


def test_resume_after_the_switch_is_bit_identical(teachers, reference) -> None:
    """Resume from the checkpoint written mid-stage-2 (teacher, loss weights, optimizer all switched)."""
    weak, strong = teachers
    ref_out, ref_summary, probe = reference
    resumed = probe.snapshot
    state = load_checkpoint(resumed / "last.pt")
    assert (state["epoch"], state["step"]) == (SWITCH, 2)
    assert state["teacher_source"]["name"] == "resnet14" and state["loss_weights"]["ckm"] == 1.0
    summary = build_trainer(effdstl_config(resumed, weak, strong), "distill", resume=True).fit()
    reference_weights, resumed_weights = (load_checkpoint(d / "last.pt")["model"] for d in (ref_out, resumed))
    assert reference_weights.keys() == resumed_weights.keys()
    for key in reference_weights:
        assert torch.equal(reference_weights[key], resumed_weights[key]), key
    assert summary["top1_last"] == ref_summary["top1_last"]
    timing = {"images_per_sec", "epoch_seconds"}
    ref_rows, rows = read_metrics(ref_out / "metrics.csv"), read_metrics(resumed / "metrics.csv")
    assert [{k: v for k, v in r.items() if k not in timing} for r in rows] == [
        {k: v for k, v in r.items() if k not in timing} for r in ref_rows
    ]


def test_replace_transform_loads_its_second_teacher_in_a_kd_only_run(teachers, tmp_path: Path) -> None:
    weak, strong = teachers
    cfg = tiny_config(
        tmp_path / "run",
        epochs=1,
        data={"train_subset": 128, "test_subset": 100, "eval_batch_size": 100},  # plumbing only: 2 steps
        teacher={"checkpoint": str(weak)},
        # MEAL-V2 base: KD only (tiny_config merges loss sections, so its default ce is switched off).
        loss={"ce": {"weight": 0.0}, "kd": {"temperature": 1.0, "scale_tau2": False, "form": "soft_ce"}},
        target_transform={
            "name": "replace",
            "checkpoint": str(strong),
            "scheme": "confidence",
            "subset": "reg|cor",
        },
    )
    trainer = build_trainer(cfg, "distill")
    assert type(trainer.target_transform.second_teacher).__name__ == "CifarResNet"
    assert not trainer.target_transform.second_teacher.training
    trainer.fit()
    row = read_metrics(tmp_path / "run" / "metrics.csv")[0]
    assert 0.0 < row["target_frac_subset"] <= 1.0 and "loss_ce" not in row
    assert 0.0 < row["loss_kd"] < 10.0  # soft CE at τ=1 to the rewritten targets, finite
    # The second teacher stays out of the run's checkpoints (it is reloaded from its file on resume).
    assert load_checkpoint(tmp_path / "run" / "last.pt")["target_transform"] == {}


def test_switch_teacher_event_takes_the_model_name_from_recipes() -> None:
    (event,) = build_events(
        [{"name": "switch_teacher", "at": 3, "checkpoint": "t.pt", "model": "timm:resnet34d"}]
    )
    assert event.name == "timm:resnet34d"
