"""DPK end to end on real data (the embedded Fashion-MNIST subset): the DPK loss falls, metrics.csv carries
per-stage CKA and π, `datakd plot dpk` draws them, `datakd cka` compares the trained models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from datakd.checkpoint import load_checkpoint
from datakd.cli import main
from datakd.engine.build import build_trainer
from datakd.engine.metrics import read_metrics
from tests.helpers import crash_and_resume, tiny_config, train_tiny_teacher


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_teacher(tmp_path_factory.mktemp("dpk-teacher") / "run")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, teacher: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dpk")
    cfg = tiny_config(
        root / "dpk",
        epochs=3,
        data={"train_subset": 1024},
        teacher={"checkpoint": str(teacher)},
        loss={
            "ce": {"weight": 1.0},
            "kd": {"weight": 0.8, "temperature": 4.0},
            "dpk": {"weight": 0.2, "width": 32, "heads": 4, "encoder_depth": 1, "decoder_depth": 1},
        },
    )
    summary = build_trainer(cfg, "distill").fit()
    return {"teacher": teacher, "student": root / "dpk" / "last.pt", "run": root / "dpk", "summary": summary}


def test_dpk_logs_cka_and_pi_per_stage_and_its_decoder_learns(runs: dict) -> None:
    summary = runs["summary"]
    # DPK's own mechanism, not a top-1 threshold (a CE student clears those): π = 1 − CKA per stage, and the
    # decoder learns to predict the teacher maps from the masked student maps.
    assert summary["extra_params"] > 0  # the transformation modules trained with the student
    rows = read_metrics(runs["run"] / "metrics.csv")
    for stage in ("stage1", "stage2", "stage3"):
        for kind in ("cka", "pi"):
            values = [r[f"dpk_{kind}_{stage}"] for r in rows]
            assert len(values) == 3 and all(0.0 <= v <= 1.0 for v in values), (kind, stage, values)
        for r in rows:
            assert r[f"dpk_pi_{stage}"] == pytest.approx(1.0 - r[f"dpk_cka_{stage}"], abs=1e-4)
    assert rows[-1]["loss_dpk"] < rows[0]["loss_dpk"]  # the decoder learns to predict the teacher maps


def test_plot_dpk(runs: dict, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    assert main(["plot", "dpk", str(runs["run"]), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "dpk.png").stat().st_size > 1000
    assert main(["plot", "dpk", str(runs["teacher"].parent), "--out", str(tmp_path)]) == 2  # no DPK columns


def test_cka_command_matrix_and_teacher_ranking(runs: dict, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cka.json"
    args = ["cka", "--student", str(runs["student"]), "--teacher", str(runs["teacher"])]
    args += ["--teacher", str(runs["student"]), "--dataset", "quickstart", "--samples", "130"]
    args += ["--batch-size", "32", "--device", "cpu", "--quiet", "--json", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "teachers by mean CKA" in text and "trailing batch" in text  # 130 = 4×32 + 2: last one skipped
    report = json.loads(out.read_text())
    real, itself = report["teachers"]
    assert len(real["matrix"]) == 3 and len(real["matrix"][0]) == 3
    assert all(-1.0 <= v <= 1.0 for row in real["matrix"] for v in row)
    assert itself["paired_mean"] == pytest.approx(1.0, abs=1e-6)  # CKA of a model with itself
    assert len(real["per_batch"]["stage3|stage3"]) == 4 and report["skipped_batches"] == 1
    assert main([*args[:-2], "--batch-size", "2"]) == 2  # a one-line error, not a traceback


def test_resume_mid_epoch_is_bit_identical(teacher: Path, tmp_path: Path, monkeypatch) -> None:
    """The per-stage modules, the epoch-window HSIC sums and the last π are part of the run state."""

    def config(out: Path):
        dpk = {"weight": 0.2, "width": 16, "heads": 2, "encoder_depth": 1, "decoder_depth": 1}
        return tiny_config(
            out,
            data={"train_subset": 256},
            teacher={"checkpoint": str(teacher)},
            engine={"checkpoint_every_iters": 3, "tensorboard": False},
            loss={"ce": {"weight": 1.0}, "dpk": {**dpk, "cka_window": "epoch"}},
        )

    build_trainer(config(tmp_path / "reference"), "distill").fit()
    # crash at step 8: the last of epoch 2 (4 steps per epoch); the checkpoint after step 6 is the last
    state, _ = crash_and_resume(config(tmp_path / "crashed"), "distill", 8, monkeypatch)
    assert state["step"] == 2  # resumes mid-epoch
    reference, resumed = (
        load_checkpoint(tmp_path / "reference/last.pt"),
        load_checkpoint(tmp_path / "crashed/last.pt"),
    )
    for part in ("model", "terms"):
        assert reference[part].keys() == resumed[part].keys()
        for key in reference[part]:
            assert torch.equal(reference[part][key], resumed[part][key]), (part, key)
    keys = set(reference["terms"])
    assert "1.stages.stage3.decoder_pos" in keys and "1.hsic_sums" in keys and "1.last_ratio" in keys
    rows = [read_metrics(tmp_path / name / "metrics.csv") for name in ("reference", "crashed")]
    assert [r["dpk_cka_stage2"] for r in rows[0]] == [r["dpk_cka_stage2"] for r in rows[1]]
