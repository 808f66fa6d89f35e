"""The training loop: it learns, it resumes bit-identically after a crash or SIGKILL, it fails clearly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from datakd.checkpoint import load_checkpoint
from datakd.engine.build import build_trainer
from datakd.errors import ConfigError, DatakdError, NonFiniteLossError
from tests.helpers import crash_and_resume, tiny_config, train_tiny_teacher

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_teacher(tmp_path_factory.mktemp("teacher") / "run")


def kd_config(out: Path, teacher_path: Path, **changes):
    base = {
        "teacher": {"checkpoint": str(teacher_path)},
        "loss": {"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "temperature": 4.0}},
    }
    base.update(changes)
    return tiny_config(out, **base)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def test_run_directory_contents(tmp_path: Path, teacher_ckpt: Path) -> None:
    summary = build_trainer(kd_config(tmp_path / "run", teacher_ckpt), "distill").fit()
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.csv", "last.pt", "best.pt", "summary.json"):
        assert (run / name).is_file(), name
    for key in ("top1_last", "top1_best", "top5_last", "epochs", "images_per_sec", "wall_seconds", "seed"):
        assert key in summary
    assert summary["epochs"] == 2 and summary["seed"] == 0
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    for column in ("epoch", "lr", "loss_ce", "loss_kd", "test_top1", "test_top5", "images_per_sec"):
        assert column in header
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["loss"]["kd"]["temperature"] == 4.0
    ckpt = load_checkpoint(run / "last.pt")
    assert {"model", "epoch", "config"} <= ckpt.keys() and ckpt["epoch"] == 2


def test_student_learns_on_real_data(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "run", epochs=3, data={"train_subset": 1024})
    summary = build_trainer(cfg, "train").fit()
    # 10 balanced classes: chance is 10 %; three epochs on 1k real images must be far above it.
    assert summary["top1_last"] > 45.0


def test_resume_after_crash_is_bit_identical(tmp_path: Path, teacher_ckpt: Path, monkeypatch) -> None:
    reference = tmp_path / "reference"
    build_trainer(kd_config(reference, teacher_ckpt), "distill").fit()

    crashed = tmp_path / "crashed"
    cfg = kd_config(crashed, teacher_ckpt, engine={"checkpoint_every_iters": 3, "tensorboard": False})
    # crash at step 11: mid epoch 2 (8 steps per epoch); the checkpoint at step 9 is the last
    state, resumed = crash_and_resume(cfg, "distill", 11, monkeypatch)
    assert (state["epoch"], state["step"]) == (1, 1)
    summary = resumed.summary()
    assert_identical(weights(reference / "last.pt"), weights(crashed / "last.pt"))
    ref_summary = json.loads((reference / "summary.json").read_text())
    assert summary["top1_last"] == ref_summary["top1_last"]
    rows = (crashed / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3  # header + one row per epoch, none duplicated


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "datakd", *args]


def test_sigkill_at_any_time_then_resume_is_bit_identical(tmp_path: Path, teacher_ckpt: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    cfg = kd_config(
        tmp_path / "unused",
        teacher_ckpt,
        epochs=3,
        engine={"checkpoint_every_iters": 2, "tensorboard": False},
    )
    values = cfg.to_dict()
    values.pop("out")
    recipe.write_text(yaml.safe_dump(values))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    reference = tmp_path / "reference"
    subprocess.run(
        _cli("distill", "--config", str(recipe), "--out", str(reference), "--quiet"),
        check=True,
        env=env,
        cwd=REPO,
        capture_output=True,
    )

    killed = tmp_path / "killed"
    command = _cli("distill", "--config", str(recipe), "--out", str(killed), "--quiet")
    process = subprocess.Popen(
        command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while not (killed / "last.pt").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # kill somewhere after the first checkpoints, wherever the run happens to be
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed = subprocess.run([*command, "--resume"], env=env, cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert_identical(weights(reference / "last.pt"), weights(killed / "last.pt"))


def test_nan_loss_stops_with_term_and_step_and_keeps_checkpoint(tmp_path: Path, monkeypatch) -> None:
    from datakd.losses.ce import CrossEntropy

    cfg = tiny_config(tmp_path / "run", engine={"checkpoint_every_iters": 2, "tensorboard": False})
    original = CrossEntropy.forward
    count = {"n": 0}

    def poisoned(self, inputs):
        count["n"] += 1
        value = original(self, inputs)
        return value * float("nan") if count["n"] == 5 else value

    monkeypatch.setattr(CrossEntropy, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"loss term 'ce' became nan at epoch 1 step 4"):
        build_trainer(cfg, "train").fit()
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["step"] == 4  # the checkpoint from before the bad step survives
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_existing_run_needs_resume(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "run", epochs=1)
    build_trainer(cfg, "train").fit()
    with pytest.raises(DatakdError, match="pass --resume"):
        build_trainer(cfg, "train")


def test_train_mode_rejects_teacher_terms(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "run", loss={"ce": {}, "kd": {"temperature": 4}})
    with pytest.raises(ConfigError, match="kd need one"):
        build_trainer(cfg, "train")


def test_distill_needs_teacher_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--teacher-checkpoint"):
        build_trainer(tiny_config(tmp_path / "run"), "distill")


def test_unknown_view_is_rejected(tmp_path: Path, teacher_ckpt: Path) -> None:
    cfg = kd_config(tmp_path / "run", teacher_ckpt, loss={"ce": {}, "kd": {"views": ["mix"]}})
    with pytest.raises(ConfigError, match=r"loss.kd.views names \['mix'\].*produces views \['main'\]"):
        build_trainer(cfg, "distill")


def test_wrong_architecture_teacher_names_keys(tmp_path: Path, teacher_ckpt: Path) -> None:
    cfg = kd_config(
        tmp_path / "run", teacher_ckpt, teacher={"checkpoint": str(teacher_ckpt), "name": "resnet20"}
    )
    with pytest.raises(DatakdError, match="resnet20"):
        build_trainer(cfg, "distill")
