"""Faults in long jobs: a preemption signal stops at a step boundary with a checkpoint and exit code 75,
`--resume auto` serves first start and requeue, timed checkpoints, and a failed checkpoint write (disk
full, unwritable folder) keeps the previous checkpoint and says which path and why."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml

from datakd.checkpoint import CheckpointWriteError, load_checkpoint
from datakd.cli import main
from datakd.engine.build import build_trainer
from datakd.engine.preemption import PREEMPTED_EXIT_CODE, Preempted
from datakd.engine.trainer import Trainer
from tests.helpers import tiny_config

REPO = Path(__file__).resolve().parents[1]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted 2-epoch run (8 steps per epoch) every interrupted run must reproduce exactly."""
    out = tmp_path_factory.mktemp("reference") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the subprocesses below (OMP_NUM_THREADS=1)
    try:
        build_trainer(tiny_config(out), "train").fit()
    finally:
        torch.set_num_threads(threads)
    return out / "last.pt"


pytestmark = pytest.mark.usefixtures("one_thread")


def signal_at_step(monkeypatch, call: int, signum: int = signal.SIGTERM) -> None:
    """Deliver `signum` to this process during the `call`-th training step (the step still completes)."""
    original = Trainer.train_step
    calls = {"n": 0}

    def step(self, batch):
        calls["n"] += 1
        if calls["n"] == call:
            os.kill(os.getpid(), signum)
        return original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", step)


def test_sigterm_finishes_the_step_checkpoints_and_resumes_exactly(
    tmp_path: Path, reference: Path, monkeypatch
) -> None:
    out = tmp_path / "run"
    handler = signal.getsignal(signal.SIGTERM)
    signal_at_step(monkeypatch, 11)  # epoch 2, step 3 of 8
    with pytest.raises(Preempted, match=r"stopped by SIGTERM after epoch 1 step 3"):
        build_trainer(tiny_config(out), "train", resume="auto").fit()
    state = load_checkpoint(out / "last.pt")
    assert (state["epoch"], state["step"], state["global_step"]) == (1, 3, 11)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "preempted"
    assert summary["stopped"] == {
        "reason": "SIGTERM",
        "epoch": 1,
        "step": 3,
        "global_step": 11,
        "checkpoint": str(out / "last.pt"),
        "exit_code": PREEMPTED_EXIT_CODE,
    }
    assert signal.getsignal(signal.SIGTERM) == handler  # the run's handler is gone after it
    monkeypatch.undo()
    summary = build_trainer(tiny_config(out), "train", resume="auto").fit()
    assert summary["status"] == "finished"
    assert_identical(weights(reference), weights(out / "last.pt"))
    assert len((out / "metrics.csv").read_text().splitlines()) == 3


def test_sigusr1_is_a_preemption_notice_too_and_configurable(tmp_path: Path, monkeypatch) -> None:
    signal_at_step(monkeypatch, 2, signal.SIGUSR1)
    with pytest.raises(Preempted, match="SIGUSR1"):
        build_trainer(tiny_config(tmp_path / "a"), "train").fit()
    # engine.preempt_signals=[SIGUSR2] leaves SIGUSR1 to its usual handler (here: ignore it)
    previous = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        signal_at_step(monkeypatch, 2, signal.SIGUSR1)
        cfg = tiny_config(tmp_path / "b", epochs=1, engine={"preempt_signals": ["SIGUSR2"]})
        assert build_trainer(cfg, "train").fit()["status"] == "finished"
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_sigterm_to_the_cli_exits_75_and_the_same_command_resumes(tmp_path: Path, reference: Path) -> None:
    """A real signal to a real process, then the same requeue command; final weights bit-identical."""
    recipe = tmp_path / "recipe.yaml"
    values = tiny_config(tmp_path / "unused").to_dict()
    values.pop("out")
    recipe.write_text(yaml.safe_dump(values))
    out = tmp_path / "run"
    command = [sys.executable, "-m", "datakd", "train", "--config", str(recipe), "--out", str(out)]
    command += ["--resume", "auto", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "metrics.csv").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)  # the first epoch has ended: the run is in its second epoch (or its eval)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == PREEMPTED_EXIT_CODE, err
    assert err.strip().startswith("datakd train: stopped by SIGTERM") and len(err.strip().splitlines()) == 1
    stopped = json.loads((out / "summary.json").read_text())["stopped"]
    assert stopped["epoch"] == 1  # stopped in epoch 2 (after its first step at the latest)
    resumed = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert_identical(weights(reference), weights(out / "last.pt"))


def test_resume_auto_starts_fresh_without_a_checkpoint(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.csv").write_text("epoch,lr\n")  # a run killed before its first checkpoint
    assert main(["train", "--config", "recipes/tiny/teacher.yaml", "--out", str(out), "--resume", "auto",
                 "--quiet", "data.dataset=quickstart", "data.options={}", "data.train_subset=64",
                 "data.test_subset=32", "epochs=1", "device=cpu", "student.name=resnet8"]) == 0  # fmt: skip
    assert json.loads((out / "summary.json").read_text())["epochs"] == 1
    assert load_checkpoint(out / "last.pt")["epoch"] == 1


def test_checkpoint_every_minutes_gives_a_mid_epoch_resume_point(
    tmp_path: Path, reference: Path, monkeypatch
) -> None:
    cfg = tiny_config(tmp_path / "run", engine={"checkpoint_every_minutes": 1e-9, "tensorboard": False})
    original = Trainer.train_step
    calls = {"n": 0}

    def crash(self, batch):
        calls["n"] += 1
        if calls["n"] == 12:
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", crash)
    with pytest.raises(KeyboardInterrupt):
        build_trainer(cfg, "train").fit()
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert (state["epoch"], state["step"]) == (1, 3)  # written after step 11, by the clock alone
    monkeypatch.undo()
    build_trainer(cfg, "train", resume=True).fit()
    assert_identical(weights(reference), weights(tmp_path / "run" / "last.pt"))


@pytest.mark.parametrize(
    "failure",
    [
        ("torch.save", OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
        ("tempfile.mkstemp", PermissionError(errno.EACCES, "Permission denied"), "Permission denied"),
    ],
    ids=["disk-full", "unwritable-dir"],
)
def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path: Path, monkeypatch, failure) -> None:
    target, error, reason = failure
    out = tmp_path / "run"
    cfg = tiny_config(out, engine={"checkpoint_every_iters": 3, "tensorboard": False})
    original = Trainer.train_step
    calls = {"n": 0}
    saved: dict[str, bytes] = {}

    def step(self, batch):
        calls["n"] += 1
        if calls["n"] == 5:  # the checkpoint after step 3 exists; the one after step 6 will fail
            saved["last"] = (out / "last.pt").read_bytes()
            module, name = target.split(".")

            def broken(*args, **kwargs):
                raise error

            monkeypatch.setattr({"torch": torch, "tempfile": tempfile}[module], name, broken)
        return original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", step)
    with pytest.raises(CheckpointWriteError) as info:
        build_trainer(cfg, "train").fit()
    message = str(info.value)
    assert "\n" not in message
    assert f"cannot write {str(out / 'last.pt')!r}: {reason}" in message
    assert "the previous last.pt is intact" in message
    assert (out / "last.pt").read_bytes() == saved["last"]
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp")) == []
    assert load_checkpoint(out / "last.pt")["step"] == 3


def test_sigterm_to_the_process_group_with_loader_workers_exits_75_and_resumes(
    tmp_path: Path, scenes_bed: Path
) -> None:
    """A scheduler signals the job's whole process group: the loader workers ignore it, the training
    process checkpoints after its step and exits 75 (before, the workers died and the run ended in
    "DataLoader worker is killed by signal: Terminated", exit 1); resumed, it equals an uninterrupted run."""
    values = {
        "name": "group",
        "task": "detection",
        "device": "cpu",
        "epochs": 3,
        "data": {"dataset": "coco", "root": str(scenes_bed), "batch_size": 2, "workers": 2},
        "student": {"name": "retinanet_r18_fpn_nano"},
        "optim": {"lr": 0.01, "weight_decay": 1e-4},
        "loss": {"detector": {}},
        "engine": {"tensorboard": False},
    }
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(values))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

    def command(out: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "datakd",
            "train",
            "--config",
            str(recipe),
            "--out",
            str(out),
            "--quiet",
        ]

    straight = subprocess.run(
        command(tmp_path / "straight"), env=env, cwd=REPO, capture_output=True, timeout=300
    )
    assert straight.returncode == 0, straight.stderr
    out = tmp_path / "run"
    process = subprocess.Popen(
        command(out), env=env, cwd=REPO, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        deadline = time.time() + 120
        while not (out / "metrics.csv").exists() and time.time() < deadline and process.poll() is None:
            time.sleep(0.02)  # epoch 1 has ended: the run is in epoch 2, its workers running
        os.killpg(process.pid, signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == PREEMPTED_EXIT_CODE, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    resumed = subprocess.run([*command(out), "--resume"], env=env, cwd=REPO, capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert_identical(weights(tmp_path / "straight" / "last.pt"), weights(out / "last.pt"))


def test_a_process_that_exits_holding_loader_workers_ends() -> None:
    """At interpreter exit `multiprocessing` terminates the daemonic workers of a loader that is still
    alive and joins them; workers that ignored every SIGTERM hung that join forever (a CI run timed out on
    it after all its tests had passed). Their parent's SIGTERM must still end them."""
    script = (
        "from torch.utils.data import DataLoader\n"
        "from datakd.data.loaders import worker_ignores_preemption\n"
        "loader = DataLoader(list(range(64)), batch_size=8, num_workers=2, persistent_workers=True,\n"
        "                    worker_init_fn=worker_ignores_preemption)\n"
        "batches = iter(loader)\n"
        "next(batches)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", script], env=env, cwd=REPO, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, err
