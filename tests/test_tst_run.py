"""TST end to end on real data: the student learns with Stage II firing, θ and the policy log are saved,
the policy plot is drawn, diverging no-prior encoders stop with a one-line error, bad setups fail early."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import torch

from datakd.augmenters.tst.encoder_file import check_compatible, load_encoders
from datakd.checkpoint import load_checkpoint
from datakd.cli import main as cli_main
from datakd.engine.build import build_trainer
from datakd.engine.metrics import read_metrics
from datakd.errors import ConfigError, DatakdError, NonFiniteLossError
from tests.helpers import tiny_config
from tests.tst_helpers import RGB32, tst_config, tst_encoders, tst_teacher


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tst_teacher(tmp_path_factory)


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tst_encoders(tmp_path_factory)


def test_student_learns_with_tst_and_stage_two_fires(tmp_path: Path, teacher: Path, encoders: Path) -> None:
    out = tmp_path / "run"
    cfg = tst_config(
        out,
        teacher,
        encoders,
        epochs=4,
        data={"options": RGB32, "train_subset": 1024},
        schedule={"milestones": [3]},
        events=[{"name": "tst_search", "at": [1], "epochs": 2, "max_steps": 6}],
    )
    build_trainer(cfg, "distill").fit()
    # TST's mechanism rather than a top-1 threshold (a CE student clears those): Stage II fires before
    # epoch 2 and moves θ, and Stage III trains on [f_DE(x) ‖ x] (tests/test_trainer_numeric.py).
    rows = read_metrics(out / "metrics.csv")
    assert [("tst_search_loss" in r) for r in rows] == [False, True, False, False]  # Stage II before epoch 2
    assert rows[1]["tst_search_lr"] <= 0.01

    with open(out / "tst_policy.csv", newline="") as handle:
        policy = list(csv.DictReader(handle))
    assert len(policy) == 3 * 14  # before the call, after pass 1, after pass 2
    assert {(r["epoch"], r["call"]) for r in policy} == {("1", "1")}
    assert [int(policy[14 * k]["search_step"]) for k in range(3)] == [0, 6, 12]
    assert all(float(r["p"]) == 0.5 for r in policy[:14])
    final = {r["op"]: r for r in policy[-14:]}
    assert any(abs(float(r["p"]) - 0.5) > 1e-4 for r in final.values())  # θ moved
    state = load_checkpoint(out / "last.pt")
    logits = state["augmenter"]["policy.prob_logits"]
    for i, op in enumerate(final):
        assert torch.sigmoid(logits[i]).item() == pytest.approx(float(final[op]["p"]), abs=1e-5)
    assert not any(k.startswith("policy.encoders") and v.requires_grad for k, v in state["augmenter"].items())
    assert state["events"][0]["calls"] == 1 and state["events"][0]["search"] is None

    assert cli_main(["plot", "tst", str(out), "--out", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "tst_policy.png").stat().st_size > 10_000


def test_stage_three_trains_on_augmented_and_original_halves(
    teacher: Path, encoders: Path, tmp_path: Path
) -> None:
    trainer = build_trainer(tst_config(tmp_path / "run", teacher, encoders), "distill")
    batch = next(iter(trainer.loader.epoch(0)))
    from datakd.api.context import StepContext

    ctx = StepContext(0, 0, 0, 1, 1, trainer.student, trainer.teacher, trainer.meters, trainer.autocast)
    (view,) = trainer.augmenter(batch, ctx)
    b = len(batch)
    assert view.name == "main" and view.images.shape[0] == 2 * b
    assert torch.equal(view.images[b:], batch.images)  # the originals, untouched
    assert not torch.equal(view.images[:b], batch.images)  # the augmented half differs
    assert torch.equal(view.labels, torch.cat([batch.labels, batch.labels]))
    assert not view.images.requires_grad  # f_DE runs without gradient in Stage III


def test_no_prior_unfrozen_encoders_diverge_into_the_nan_guard(teacher: Path, tmp_path: Path) -> None:
    """Table 7 "Ours*" (unfitted, trainable encoders) explodes in the paper after 30 Stage II epochs.

    A tiny CPU run cannot wait for that, so the divergence is induced with an extreme Stage II lr and no
    clipping; what is tested is that the run then stops with one line, not a stack of NaN epochs."""
    out = tmp_path / "run"
    changes = {"prior": False, "freeze_encoders": False, "clip_grad_norm": None}
    cfg = tst_config(out, teacher, None, {**changes, "lr": 1e12}, epochs=2, events=[
        {"name": "tst_search", "at": [1], "epochs": 1, "max_steps": 8}
    ])  # fmt: skip
    with pytest.raises(NonFiniteLossError) as caught:
        build_trainer(cfg, "distill").fit()
    message = str(caught.value)
    assert "\n" not in message and "last.pt" in message
    assert re.match(r"loss term '(ce|kd)' became (nan|inf|-inf) at epoch 2 step \d+", message), message
    assert load_checkpoint(out / "last.pt")["epoch"] == 1  # the last good state is kept
    # A faster blow-up is caught inside Stage II by the same engine.nan_guard.
    cfg = tst_config(tmp_path / "run2", teacher, None, {**changes, "lr": 1e25}, epochs=2, events=[
        {"name": "tst_search", "at": [1], "epochs": 1, "max_steps": 8}
    ])  # fmt: skip
    with pytest.raises(NonFiniteLossError, match=r"TST Stage II loss became nan at epoch 2 pass 1"):
        build_trainer(cfg, "distill").fit()


def test_bad_setups_fail_with_one_line(teacher: Path, encoders: Path, tmp_path: Path) -> None:
    with pytest.raises(DatakdError, match="not found; fit it first with `datakd tst fit"):
        build_trainer(tst_config(tmp_path / "a", teacher, tmp_path / "missing.pt"), "distill")
    gray = tst_config(tmp_path / "b", teacher, encoders, data={"options": {"pad_to_32": True, "rgb": False}})
    # 1-channel data: the models (3-channel) are refused first, before any method is set up ...
    with pytest.raises(DatakdError, match=r"cannot take the 1×32×32 .* images of 'quickstart'"):
        build_trainer(gray, "distill")
    # ... and the encoders refuse a run whose channels / normalisation differ from the fitted ones
    with pytest.raises(DatakdError, match=r"fitted on quickstart \(3 channels"):
        check_compatible(load_encoders(encoders), (0.5,), (0.5,), 1, str(encoders))
    wrong_event = tiny_config(
        tmp_path / "c",
        teacher={"checkpoint": str(teacher)},
        data={"options": RGB32},
        student={"name": "resnet8", "kwargs": {}},
        loss={"ce": {}, "kd": {}},
        events=[{"name": "tst_search", "at": [1]}],
    )
    with pytest.raises(ConfigError, match="event tst_search needs augmenter tst"):
        build_trainer(wrong_event, "distill").fit()
    with pytest.raises(ConfigError, match="set prior: false"):
        build_trainer(tst_config(tmp_path / "d", teacher, None), "distill")
    with pytest.raises(ConfigError, match="code, paper, standard"):
        build_trainer(tst_config(tmp_path / "e", teacher, encoders, {"rbd_mode": "Code"}), "distill")
    with pytest.raises(ConfigError, match="epochs_spatial"):
        build_trainer(tst_config(tmp_path / "f", teacher, encoders, {"fit": {"epoch_spatial": 1}}), "distill")


def test_the_control_without_fde_trains_on_the_same_two_halves_with_identity(
    teacher: Path, tmp_path: Path
) -> None:
    """`fde: false` (evidence arm kd_tstloss): the batch [x ‖ x] of TST with f_DE the identity; no encoders
    are needed, and Stage II, which has nothing to search, is refused in one line."""
    cfg = tst_config(tmp_path / "run", teacher, None, {"fde": False}, events=[])
    trainer = build_trainer(cfg, "distill")
    batch = next(iter(trainer.loader.epoch(0)))
    from datakd.api.context import StepContext

    ctx = StepContext(0, 0, 0, 1, 1, trainer.student, trainer.teacher, trainer.meters, trainer.autocast)
    (view,) = trainer.augmenter(batch, ctx)
    assert torch.equal(view.images, torch.cat([batch.images, batch.images]))
    assert torch.equal(view.labels, torch.cat([batch.labels, batch.labels]))
    searched = tst_config(tmp_path / "run2", teacher, None, {"fde": False})
    with pytest.raises(ConfigError, match="fde: false"):
        build_trainer(searched, "distill").fit()
