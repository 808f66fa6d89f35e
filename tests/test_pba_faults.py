"""Faults in a PBA search on Ray Tune: a member whose process dies is retried from its last checkpoint,
and a killed search driver resumes with the same command without losing a finished member."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from datakd.config import load_config
from datakd.pba.search import prepare_spec, run_search
from tests.helpers import communicate_or_kill
from tests.pba_fault_helpers import CRASH_DIR, CrashOnceTrial, RankedTrial

REPO = Path(__file__).resolve().parents[1]
RECIPE = """
name: tiny-pba
seed: 0
device: cpu
epochs: 3
quiet: true
data: {dataset: quickstart, batch_size: 64, eval_batch_size: 500, augment: crop_flip, crop_padding: 2}
student: {name: resnet8, kwargs: {in_channels: 1}}
optim: {name: sgd, lr: 0.1, momentum: 0.9, weight_decay: 0.0005}
schedule: {name: multistep, milestones: [2], gamma: 0.1}
loss: {ce: {weight: 1.0}}
engine: {tensorboard: false}
"""


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    pytest.importorskip("ray")
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    return path


def _search(
    recipe: Path,
    tmp_path: Path,
    trial: type,
    *,
    epochs: int,
    population: int,
    interval: int,
    slots: int,
    synch: bool = False,
) -> dict:
    """A quiet teacher-role search of `trial` members on 128 + 128 images, in tmp_path/search."""
    spec = prepare_spec(load_config(recipe), "teacher", epochs=epochs, train_size=128, val_size=128)
    return run_search(
        spec,
        tmp_path / "search",
        population=population,
        perturbation_interval=interval,
        num_cpus=slots,
        synch=synch,
        quiet=True,
        trainable_class=trial,
    )


def test_crashed_member_is_retried_from_its_last_checkpoint(recipe: Path, tmp_path: Path, monkeypatch):
    crash = tmp_path / "crash"
    crash.mkdir()
    monkeypatch.setenv(CRASH_DIR, str(crash))  # inherited by the local Ray workers
    summary = _search(recipe, tmp_path, CrashOnceTrial, epochs=3, population=2, interval=3, slots=2)
    crashed = (crash / "crashed").read_text()
    members = {m["trial"]: m for m in summary["members"]}
    assert crashed in members and all(m["val_acc"] is not None for m in members.values())
    steps = [line.split() for line in (crash / "steps.log").read_text().splitlines()]
    epochs = [int(e) for trial, e in steps if trial == crashed]
    # epoch 0 ran once: the retry restored the checkpoint written after it, then redid the step that died
    assert epochs == [0, 1, 1, 2]
    assert json.loads((tmp_path / "search" / "search.json").read_text())["population"] == 2


def _terminated(experiment: Path) -> int:
    states = sorted(experiment.glob("experiment_state-*.json"))
    if not states:
        return 0
    try:
        return states[-1].read_text().count("TERMINATED")
    except OSError:
        return 0


def test_killed_driver_resumes_with_the_same_command(recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "search"
    command = [sys.executable, "-m", "datakd", "pba", "search", "--role", "teacher", "--config", str(recipe)]
    # 1,024 training images: a member lasts a few seconds even on an idle machine, so the state file
    # (saved every second) shows the first member finished before the second one is (with 128 images both
    # could finish inside one save interval, and the driver was killed too late)
    command += ["--population", "2", "--epochs", "3", "--train-size", "1024", "--val-size", "128"]
    command += ["--num-cpus", "1", "--perturbation-interval", "3", "--quiet", "--out", str(out)]
    # one member at a time: the first finishes while the second has not yet; the experiment state is
    # saved every second so the kill below cannot outrun it
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    quiet = subprocess.DEVNULL
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=quiet, stderr=quiet, start_new_session=True)
    experiment = out / "ray" / "search"
    try:
        deadline = time.time() + 240
        while time.time() < deadline and process.poll() is None and _terminated(experiment) < 1:
            time.sleep(0.2)
        assert process.poll() is None, "the search ended before the driver could be killed"
        assert _terminated(experiment) == 1
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the driver and the Ray processes it started
        process.wait()
    finished = [p for p in experiment.iterdir() if (p / "result.json").is_file()]
    results_before = {p.name: (p / "result.json").read_text() for p in finished}
    # Its own session too: on a timeout the whole Ray tree goes, instead of Ray processes left in pytest's
    # process group (one such leftover once delivered SIGTERM to a later test in this process).
    resumed = subprocess.Popen(
        command, env=env, cwd=REPO, stdout=quiet, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    stderr = communicate_or_kill(resumed, timeout=300)
    assert resumed.returncode == 0, stderr[-3000:]
    summary = json.loads((out / "search.json").read_text())
    assert len(summary["members"]) == 2 and all(m["val_acc"] is not None for m in summary["members"])
    done_before = [name for name, text in results_before.items() if '"done": true' in text]
    assert len(done_before) == 1
    members = [p for p in experiment.iterdir() if (p / "result.json").is_file()]
    assert len(members) == 2  # the same two trials, restored (a fresh search would have added two)
    # the finished member was kept as it was, not trained again
    assert (experiment / done_before[0] / "result.json").read_text() == results_before[done_before[0]]


def test_exploited_checkpoint_outlives_the_donors_next_interval(recipe: Path, tmp_path: Path) -> None:
    # Synchronous PBT with more members than slots: after the exploit at epoch 5, the best member (trial 0)
    # runs its next five epochs before the worst one (trial 3) restores trial 0's epoch-5 checkpoint. With
    # Ray keeping only the newest 4 checkpoints per member, that checkpoint was gone by then and trial 3
    # failed ("does not exist on storage anymore"), leaving a smaller population without a word.
    summary = _search(recipe, tmp_path, RankedTrial, epochs=10, population=4, interval=5, slots=1, synch=True)
    assert summary["errored"] == []
    assert len(summary["members"]) == 4
    rewards = sorted(m["val_acc"] for m in summary["members"])
    assert rewards[-1] == 100.0  # trial 0, the donor, is the best member
