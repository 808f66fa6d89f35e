"""Config validation, overrides, registries and the CLI's one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from datakd.checkpoint import atomic_save, load_checkpoint
from datakd.cli import main
from datakd.config import ScheduleConfig, load_config
from datakd.engine.optim import LRSchedule
from datakd.errors import ConfigError, DatakdError
from datakd.losses.base import build_terms

REPO = Path(__file__).resolve().parents[1]


def test_overrides_are_typed_and_validated() -> None:
    cfg = load_config(
        REPO / "recipes" / "tiny" / "kd.yaml",
        ["optim.lr=0.2", "schedule.milestones=[1,2]", "loss.kd.temperature=2"],
    )
    assert cfg.optim.lr == 0.2 and cfg.schedule.milestones == [1.0, 2.0]
    assert cfg.loss["kd"]["temperature"] == 2
    with pytest.raises(ConfigError, match=r"unknown config key in optim: 'lrr' \(did you mean 'lr'\?\)"):
        load_config(None, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"optim\.lr: expected a number, got 'fast'"):
        load_config(None, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(None, ["optim.lr"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("no/such/recipe.yaml")


def test_unknown_names_list_valid_choices() -> None:
    with pytest.raises(
        DatakdError, match=r"unknown loss term 'kdd' \(did you mean 'kd'\?\); valid choices: .*ce"
    ):
        build_terms({"kdd": {}})
    with pytest.raises(ConfigError, match=r"option of loss term 'kd': 'temp'.*temperature"):
        build_terms({"kd": {"temp": 4}})


def test_schedules() -> None:
    multistep = LRSchedule(ScheduleConfig(name="multistep", milestones=[2, 4], gamma=0.1), 10, 6, base_lr=0.1)
    assert [multistep.factor(e * 10) for e in range(6)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    scaled = LRSchedule(ScheduleConfig(name="multistep", milestones=[2, 4], scale=2), 10, 12, base_lr=0.1)
    assert scaled.factor(39) == 1.0 and scaled.factor(40) == pytest.approx(0.1)  # decay epochs × k
    assert scaled.factor(80) == pytest.approx(0.01)
    cosine = LRSchedule(ScheduleConfig(name="cosine", eta_min=0.001), 10, 4, base_lr=0.1)
    assert cosine.factor(0) == 1.0 and cosine.factor(20) == pytest.approx(0.505) and cosine.factor(40) == 0.01
    warm = LRSchedule(
        ScheduleConfig(name="cosine", warmup_epochs=1, warmup_start_factor=0.1), 10, 5, base_lr=1
    )
    assert warm.factor(0) == pytest.approx(0.1) and warm.factor(5) == pytest.approx(0.55)
    restarted = LRSchedule(ScheduleConfig(name="cosine"), 10, 10, base_lr=1, start_epoch=6)
    assert restarted.factor(60) == 1.0 and restarted.factor(100) == pytest.approx(0.0, abs=1e-12)


def test_atomic_save_keeps_old_file_when_writing_fails(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "last.pt"
    atomic_save({"model": {"w": torch.ones(2)}, "epoch": 1}, path)

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        atomic_save({"epoch": 2}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_cli_list_and_errors(capsys) -> None:
    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    assert "kd" in out and "Hinton" in out
    assert main(["list", "models"]) == 0
    assert "resnet8" in capsys.readouterr().out
    assert (
        main(
            [
                "train",
                "--config",
                str(REPO / "recipes/tiny/teacher.yaml"),
                "student.name=resnet9000",
                "--data-root",
                str(REPO),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown model 'resnet9000'" in err
    assert main(["train", "--config", str(REPO / "recipes/tiny/teacher.yaml")]) == 2
    assert "needs a data root: pass --data-root DIR" in capsys.readouterr().err
    assert (
        main(["train", "--config", str(REPO / "recipes/tiny/teacher.yaml"), "--data-root", "/no/such"]) == 2
    )
    assert "'/no/such'" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", "/no/such.pt", "--dataset", "quickstart"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_python_dash_m_help() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "datakd", "--help"], capture_output=True, text=True, env=env)
    assert out.returncode == 0
    for command in ("quickstart", "train", "distill", "eval", "list"):
        assert command in out.stdout


def test_options_of_entries_without_a_constructor_are_rejected() -> None:
    from datakd.augmenters.base import build_augmenter

    with pytest.raises(ConfigError, match=r"option of augmenter 'none': 'foo'"):
        build_augmenter({"name": "none", "foo": 1})


def test_overrides_may_stand_on_both_sides_of_flags(capsys) -> None:
    from datakd.cli import _parse, build_parser

    parser = build_parser()
    args = _parse(parser, ["distill", "--config", "r.yaml", "a=1", "--quiet", "b=2", "a=3"])
    assert args.overrides == ["a=1", "b=2", "a=3"]  # command-line order: the last a= wins
    assert args.quiet and args.config == "r.yaml"
    for bad in (["distill", "--config", "r.yaml", "a=1", "--quiet", "--bogus"], ["list", "models", "x=1"]):
        with pytest.raises(SystemExit):
            _parse(parser, bad)
        assert "unrecognized arguments" in capsys.readouterr().err
