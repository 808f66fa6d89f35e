"""EffDstl §4 analysis on a tiny model and data slice: the normalised score (function and command), the
subset membership the probe uses, the FGSM probe (Fig. 7) end to end, and train vs validation top-1
(Fig. 8: the trainer's train_top1 column, `datakd effdstl trainval`, `datakd plot trainval`)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from datakd.cli import main as cli_main
from datakd.engine.metrics import read_metrics
from datakd.errors import DatakdError
from datakd.targets.analysis import normalized_score, subset_membership
from datakd.targets.subsets import Subset
from tests.helpers import train_tiny_teacher


def test_normalized_score_by_hand() -> None:
    assert normalized_score(72.0, 70.0, 74.0) == pytest.approx(0.5)
    assert normalized_score(70.0, 70.0, 74.0) == 0.0 and normalized_score(74.0, 70.0, 74.0) == 1.0
    assert normalized_score(69.0, 70.0, 74.0) == pytest.approx(-0.25)  # worse than the weak teacher
    with pytest.raises(DatakdError, match="must differ"):
        normalized_score(71.0, 70.0, 70.0)


def test_score_command_reads_summaries(tmp_path: Path, capsys) -> None:
    for name, top1 in (("weak", 60.0), ("strong", 64.0), ("a", 63.0), ("b", 59.0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({"top1_last": top1}))
    out = tmp_path / "scores.json"
    argv = ["effdstl", "score", str(tmp_path / "a"), str(tmp_path / "b"), "--weak", str(tmp_path / "weak")]
    assert cli_main([*argv, "--strong", str(tmp_path / "strong"), "--json", str(out)]) == 0
    scores = [r["score"] for r in json.loads(out.read_text())["runs"]]
    assert scores == [pytest.approx(0.75), pytest.approx(-0.25)]
    assert "0.750" in capsys.readouterr().out
    assert cli_main(["effdstl", "score", str(tmp_path / "a"), "--weak", str(tmp_path), "--strong", "x"]) == 2
    assert "summary.json' not found" in capsys.readouterr().err


def test_subset_membership_by_hand() -> None:
    labels = torch.tensor([0, 0, 1])
    # teacher: right & unsure, right & sure, wrong; student: sure of 0, unsure of 0, sure of 1
    teacher = torch.log(torch.tensor([[0.6, 0.4], [0.9, 0.1], [0.7, 0.3]]))
    student = torch.log(torch.tensor([[0.8, 0.2], [0.7, 0.3], [0.1, 0.9]]))
    assert subset_membership(Subset("reg&cor"), teacher, student, labels).tolist() == [True, False, False]
    assert subset_membership(Subset("!cor"), teacher, student, labels).tolist() == [False, False, True]
    assert subset_membership(Subset("reg"), teacher, student, labels).tolist() == [True, False, True]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A resnet14 teacher (3 epochs) and a weaker resnet8 (1 epoch) on the embedded Fashion-MNIST slice."""
    root = tmp_path_factory.mktemp("effdstl-analysis")
    return train_tiny_teacher(root / "teacher", epochs=3), train_tiny_teacher(root / "s", 1, "resnet8")


def test_train_top1_is_logged_and_trainval_commands_plot_it(runs: tuple[Path, Path], tmp_path: Path) -> None:
    teacher_run = runs[0].parent
    rows = read_metrics(teacher_run / "metrics.csv")
    train = [r["train_top1"] for r in rows]
    assert len(train) == 3 and all(0 <= t <= 100 for t in train)
    assert train[-1] > 30 and train[-1] > train[0]  # chance is 10 %; the teacher learns
    png = tmp_path / "fig8.png"
    argv = ["effdstl", "trainval", str(teacher_run), str(runs[1].parent), "--label", "t", "--label", "s"]
    assert cli_main([*argv, "--out", str(png)]) == 0
    assert png.stat().st_size > 10_000
    assert cli_main(["plot", "trainval", str(teacher_run), "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "trainval.png").is_file()


def test_fgsm_probe_end_to_end(runs: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    teacher, student = runs
    out = tmp_path / "probe"
    argv = ["effdstl", "fgsm", "--teacher", str(teacher), "--student", str(student)]
    argv += ["--probe", f"again={teacher}", "--dataset", "quickstart", "--option", "rgb=false"]
    argv += ["--subset", "cor", "--samples", "40", "--pool", "300", "--epsilon", "0.03", "--out", str(out)]
    assert cli_main([*argv, "--device", "cpu"]) == 0
    with open(out / "probe.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["network"] for r in rows} == {"teacher", "student", "again"}
    per_group = {g: len({r["index"] for r in rows if r["manipulated"] == g}) for g in ("True", "False")}
    assert per_group == {"True": 40, "False": 40}  # the teacher gets > 40 of 300 right and > 40 wrong
    summary = json.loads((out / "probe.json").read_text())["summary"]
    # FGSM ascends the teacher's CE, so its confidence on the label drops; `again` is the same network
    for group in ("kept", "manipulated"):
        assert summary["teacher"][group]["mean_delta"] < 0
        assert summary["again"][group] == summary["teacher"][group]
    # samples the teacher gets right ("cor") sit at higher confidence and lose more of it than wrong ones
    assert summary["teacher"]["manipulated"]["mean_delta"] < summary["teacher"]["kept"]["mean_delta"]
    deltas = [float(r["delta"]) for r in rows]
    assert all(-1 <= d <= 1 for d in deltas)
    assert (out / "fgsm_probe.png").stat().st_size > 10_000
    assert "teacher: kept n=40" in capsys.readouterr().out
