"""Sweeps: aggregation math on synthetic run directories, grid parsing, and a killed sweep that resumes
without counting any run twice."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from datakd.report import report_table
from datakd.sweep import (
    aggregate,
    command_for,
    parse_grid,
    plan,
    point_name,
    run_finished,
    run_state,
    write_results,
)
from tests.helpers import tiny_config

REPO = Path(__file__).resolve().parents[1]


def fake_run(run_dir: Path, last: float, best: float, ips: float = 100.0) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(
        json.dumps(
            {
                "top1_last": last,
                "top1_best": best,
                "top5_last": last + 10,
                "top5_best": best + 10,
                "images_per_sec": ips,
                "device_hours": 0.01,
            }
        )
    )


def test_grid_parsing_and_naming() -> None:
    grid = parse_grid(["optim.lr=0.1,0.05", "schedule.milestones=[1,2],[3]"])
    assert grid == [("optim.lr", [0.1, 0.05]), ("schedule.milestones", [[1, 2], [3]])]
    runs = plan(Path("out"), [0, 1], grid)
    assert len(runs) == 8 and len({r.run_dir for r in runs}) == 8
    assert point_name((("optim.lr", 0.1),)) == "lr=0.1"
    assert runs[0].overrides[:2] == ["optim.lr=0.1", "schedule.milestones=[1, 2]"]


def test_aggregation_mean_sample_std_best_vs_last(tmp_path: Path) -> None:
    runs = plan(tmp_path, [0, 1, 2], parse_grid(["optim.lr=0.1,0.2"]))
    lasts, bests = [70.0, 71.0, 73.0], [71.0, 72.5, 73.0]
    for run, last, best in zip(runs[:3], lasts, bests):
        fake_run(run.run_dir, last, best)
    fake_run(runs[3].run_dir, 60.0, 61.0)  # second point: one seed only
    rows = aggregate(runs)
    assert rows[0]["n"] == 3 and rows[0]["missing_seeds"] == []
    assert rows[0]["top1_last"]["mean"] == pytest.approx(71.333333, rel=1e-6)
    assert rows[0]["top1_last"]["std"] == pytest.approx(statistics.stdev(lasts))  # n−1, not population
    assert rows[0]["top1_last"]["std"] == pytest.approx(1.527525, rel=1e-6)
    assert rows[0]["top1_best"]["mean"] == pytest.approx(72.166667, rel=1e-6)
    assert rows[1]["n"] == 1 and rows[1]["top1_last"]["std"] is None and rows[1]["missing_seeds"] == [1, 2]


def test_a_preempted_run_is_resumed_not_counted(tmp_path: Path) -> None:
    """SIGTERM makes a run write summary.json too (status "preempted", at the epoch it stopped): that
    summary must neither count as a result nor stop the next invocation from resuming the run."""
    runs = plan(tmp_path, [0, 1, 2], [])
    fake_run(runs[0].run_dir, 70.0, 71.0)  # an older summary without a status: finished
    fake_run(runs[1].run_dir, 40.0, 41.0)
    summary = runs[1].run_dir / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "status": "preempted"}))
    (runs[1].run_dir / "last.pt").write_bytes(b"checkpoint")
    fake_run(runs[2].run_dir, 72.0, 72.0)
    summary = runs[2].run_dir / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "status": "finished"}))
    assert [run_finished(r.run_dir) for r in runs] == [True, False, True]
    assert [run_state(r) for r in runs] == ["done", "partial", "done"]
    assert command_for(runs[1], tmp_path / "r.yaml", "train", [], True)[-3:] == [
        "--resume",
        "auto",
        "--quiet",
    ]
    row = aggregate(runs)[0]
    assert row["seeds"] == [0, 2] and row["missing_seeds"] == [1]
    assert row["top1_last"]["values"] == [70.0, 72.0]


def test_report_lists_paper_rows_and_unrun_recipes(tmp_path: Path) -> None:
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    ran, never = recipes / "ran.yaml", recipes / "never.yaml"
    for path, top1 in ((ran, 75.0), (never, 80.0)):
        path.write_text(
            yaml.safe_dump({"name": path.stem, "reference": {"paper": "001", "table": 3, "top1": top1}})
        )
    runs = plan(tmp_path / "sweeps" / "ran", [0, 1], [])
    fake_run(runs[0].run_dir, 74.0, 75.0)
    fake_run(runs[1].run_dir, 76.0, 76.0)
    write_results(tmp_path / "sweeps" / "ran", ran, "distill", runs, [])
    table = report_table(tmp_path / "sweeps", [recipes])
    assert "| ran | paper 001 · table 3 | base | 2 | 75.00 ± 1.41 | 75.50 ± 0.71 | 75.0 | +0.00 |" in table
    assert "| never | paper 001 · table 3 | – | 0 | not run | not run | 80.0 | – |" in table


def test_killed_sweep_resumes_without_double_counting(tmp_path: Path) -> None:
    cfg = tiny_config(
        tmp_path / "unused", epochs=2, engine={"checkpoint_every_iters": 2, "tensorboard": False}
    )
    values = cfg.to_dict()
    values.pop("out")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(values))
    out = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "datakd",
        "sweep",
        "--recipe",
        str(recipe),
        "--seeds",
        "0,1",
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    first = out / "base" / "seed0" / "summary.json"
    second_ckpt = out / "base" / "seed1" / "last.pt"
    deadline = time.time() + 240
    while time.time() < deadline and not (first.exists() and second_ckpt.exists()):
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # seed 0 finished, seed 1 interrupted
    process.wait()
    assert first.exists() and not (out / "base" / "seed1" / "summary.json").exists()
    finished_at = first.stat().st_mtime_ns
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert first.stat().st_mtime_ns == finished_at  # the finished run was not re-run
    sweep = json.loads((out / "sweep.json").read_text())
    assert [p["seeds"] for p in sweep["points"]] == [[0, 1]] and sweep["points"][0]["n"] == 2
    assert len(sweep["points"][0]["top1_last"]["values"]) == 2
