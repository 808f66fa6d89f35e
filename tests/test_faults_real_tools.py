"""Real faults in the tools around training: the scenes test-bed generator, the evidence runner's results
folder, a PBA search member's checkpoint write. The disk fills for real (a size-limited tmpfs, or one
filled to its last byte right before the writer under test runs); mounting needs root, else these skip.
The training runs' own writers are covered by tests/test_faults_real.py, whose helpers these reuse.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest

from datakd.faults import STORAGE_EXIT_CODE
from tests.test_faults_real import _mount, fill, one_line, run_cli, snapshot, tmpfs

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def no_temp_files(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name == ".scenes-partial"]


# ----------------------------------------------------------------------------------------------- scenes
def _manifest_holds(bed: Path) -> bool:
    """`sha256sum -c MANIFEST.sha256`: every listed file has its digest, and every file is listed."""
    listed = {}
    for line in (bed / "MANIFEST.sha256").read_text().splitlines():
        digest, name = line.split("  ", 1)
        listed[name] = digest
    files = {p.relative_to(bed).as_posix() for p in bed.rglob("*") if p.is_file()} - {"MANIFEST.sha256"}
    return files == set(listed) and all(
        hashlib.sha256((bed / n).read_bytes()).hexdigest() == d for n, d in listed.items()
    )


def test_scenes_on_a_full_disk_keep_the_old_test_bed_and_a_rerun_writes_the_new_one(
    fmnist_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 1 MB tmpfs holds a 6-canvas test bed; the 80-canvas --overwrite that follows runs out of space
    mid-way: one line, exit 74, the old test bed byte for byte, no staging folder; once the space is
    there, the same command writes a complete one (its MANIFEST checks out)."""
    with tmpfs(tmp_path / "disk", "1m") as disk:
        bed = disk / "scenes"
        base = ["data", "scenes", "--source", str(fmnist_root), "--out", str(bed), "--size", "64"]
        code, err = run_cli([*base, "--train", "4", "--val", "2"], capsys)
        assert code == 0, err
        before = snapshot(bed)
        big = [*base, "--train", "60", "--val", "20", "--overwrite"]
        code, err = run_cli(big, capsys)
        line = one_line(err)
        assert code == STORAGE_EXIT_CODE, line
        assert f"cannot write the scenes test bed in {str(bed)!r} (at '" in line
        assert "No space left on device (errno 28)" in line and "the test bed there before is intact" in line
        assert snapshot(bed) == before and not no_temp_files(bed)

        fresh = disk / "fresh"  # no test bed before: nothing is left behind at all
        code, err = run_cli([*big[:-1], "--out", str(fresh)], capsys)
        assert code == STORAGE_EXIT_CODE and "the folder was removed again" in one_line(err)
        assert not fresh.exists()

        _mount("-o", "remount,size=16m", str(disk))  # space freed
        code, err = run_cli(big, capsys)
        assert code == 0, err
        assert _manifest_holds(bed) and len(list((bed / "train2017").iterdir())) == 60


# ----------------------------------------------------------------------------------------------- evidence
PROTOCOL = ["--epochs", "2", "--teacher-epochs", "1", "--train-size", "100", "--teacher-size", "200"]
PROTOCOL += ["--test-size", "100", "--jobs", "2", "--threads", "1"]


def evidence(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """benchmarks/evidence/run.py in this process (its runs are child processes); torch's thread count,
    which the runner sets for its evaluations, is restored."""
    import torch

    from benchmarks.evidence.run import main as run_main

    threads = torch.get_num_threads()
    capsys.readouterr()
    try:
        code = run_main(args)
    finally:
        torch.set_num_threads(threads)
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def evidence_work(fmnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A results folder and a work folder where the teacher and arms ce, kd (seed 0) have finished (a
    200-image teacher, 100-image students, 2 epochs: about 13 s)."""
    base = tmp_path_factory.mktemp("evidence")
    args = [sys.executable, str(REPO / "benchmarks/evidence/run.py"), "--data-root", str(fmnist_root)]
    args += ["--out", str(base / "out"), "--work", str(base / "work"), "--arms", "ce,kd", "--seeds", "0"]
    done = subprocess.run([*args, *PROTOCOL], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return {"out": base / "out", "work": base / "work", "data": fmnist_root}


def fill_before(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, disk: Path, watched: Path, call: int,
                when: Callable[..., bool] = lambda *a, **k: True) -> dict[str, Any]:  # fmt: skip
    """Right before the `call`-th qualifying call of `owner.name`, snapshot `watched` and fill `disk`."""
    original = getattr(owner, name)
    state: dict[str, Any] = {"calls": 0}

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if when(*args, **kwargs):
            state["calls"] += 1
            if state["calls"] == call:
                state["before"] = snapshot(watched)
                state["ballast"] = fill(disk)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return state


EVIDENCE_WRITERS = {
    # writer: (attribute of benchmarks.evidence.report, qualifying call, which call, the file named)
    "raw": ("save_atomically", lambda _, path: path.name == "summary.json", 2, "raw/kd-seed0/summary.json"),
    "runs.csv": ("append_row", None, 2, "runs.csv"),
    "meta.json": ("write_json", None, 4, "meta.json"),  # at start, teachers, ce's row, kd's row
}  # fmt: skip


@pytest.mark.parametrize("writer", sorted(EVIDENCE_WRITERS))
def test_evidence_results_on_a_full_disk_one_line_and_the_same_command_finishes(
    writer: str,
    evidence_work: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The results folder on a tmpfs that fills while the second run (kd) is recorded: one line naming the
    file, exit 74, every file written before unchanged, no temp file; after freeing the space the same
    command records kd and leaves ce's row as it was."""
    from benchmarks.evidence import report

    attribute, when, call, named = EVIDENCE_WRITERS[writer]
    with tmpfs(tmp_path / "disk", "4m") as disk:
        out = disk / "out"
        args = [
            "--data-root",
            str(evidence_work["data"]),
            "--out",
            str(out),
            "--work",
            str(evidence_work["work"]),
        ]
        args += ["--arms", "ce,kd", "--seeds", "0", *PROTOCOL]  # fmt: skip
        state = fill_before(monkeypatch, report, attribute, disk, out, call, when or (lambda *a, **k: True))
        code, err = evidence(args, capsys)
        line = one_line(err)
        assert code == STORAGE_EXIT_CODE, line
        assert line.startswith(f"evidence: error: cannot write {str(out / named)!r}: No space left on device")
        assert "rerun the same command" in line and "--resume" not in line
        for path, data in state["before"].items():
            assert (out / path).read_bytes() == data, path
        assert not no_temp_files(out)
        monkeypatch.undo()
        state["ballast"].unlink()  # space freed
        code, err = evidence(args, capsys)
        assert code == 0, err
        rows = {(r["arm"], r["seed"]): r for r in report.read_rows(out / "runs.csv")}
        assert set(rows) == {("ce", "0"), ("kd", "0")}
        if "runs.csv" in state["before"]:
            assert (out / "runs.csv").read_bytes().startswith(state["before"]["runs.csv"])
        assert json.loads((out / "raw" / "kd-seed0" / "summary.json").read_text())["status"] == "finished"


def test_evidence_report_on_a_full_disk_keeps_the_old_figure_and_results(
    evidence_work: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--aggregate-only into a full disk: the figure (written first) fails; it and RESULTS.md stay as were."""
    with tmpfs(tmp_path / "disk", "1m") as disk:
        results, figure = disk / "RESULTS.md", disk / "evidence.png"
        args = ["--out", str(evidence_work["out"]), "--aggregate-only", "--results", str(results)]
        args += ["--figure", str(figure)]
        code, err = evidence(args, capsys)
        assert code == 0, err
        before = snapshot(disk)
        ballast = fill(disk)
        code, err = evidence(args, capsys)
        line = one_line(err)
        assert code == STORAGE_EXIT_CODE, line
        assert f"cannot write {str(figure)!r}: No space left on device (errno 28)" in line
        assert "the previous evidence.png is intact" in line
        ballast.unlink()
        assert snapshot(disk) == before and not no_temp_files(disk)
        code, err = evidence(args, capsys)
        assert code == 0, err


def test_a_run_that_exits_74_stops_the_evidence_runner_with_its_line(
    evidence_work: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The work folder (teachers, runs) on a full disk: the run's own process refuses to start (exit 74);
    the runner starts no further run and ends with that run's line; once there is space it finishes."""
    import shutil

    from benchmarks.evidence import report

    with tmpfs(tmp_path / "disk", "8m") as disk:
        work = disk / "work"
        shutil.copytree(evidence_work["work"] / "teachers", work / "teachers")
        out = tmp_path / "out"
        args = ["--data-root", str(evidence_work["data"]), "--out", str(out), "--work", str(work)]
        args += ["--arms", "ce,kd", "--seeds", "1", *PROTOCOL, "--jobs", "1"]  # one run at a time
        ballast = fill(disk)
        code, err = evidence(args, capsys)
        line = one_line(err)
        assert code == STORAGE_EXIT_CODE, line
        run_dir = work / "arms" / "ce" / "base" / "seed1"
        assert line.startswith(f"evidence: error: ce seed 1: run directory {str(run_dir)!r} is not writable")
        assert "No space left on device (errno 28)" in line and "rerun the same command" in line
        assert not (out / "logs" / "kd-seed1.log").exists()  # no further run was started
        ballast.unlink()
        code, err = evidence(args, capsys)
        assert code == 0, err
        assert {(r["arm"], r["seed"]) for r in report.read_rows(out / "runs.csv")} == {
            ("ce", "1"),
            ("kd", "1"),
        }


# ----------------------------------------------------------------------------------------------- PBA search
def test_a_pba_members_checkpoint_on_a_full_disk_is_one_line_and_leaves_the_old_one(tmp_path: Path) -> None:
    """`PBATrial.save_checkpoint`'s own writers (trainer.pt, history.json) into a full tmpfs: one line
    naming the file, the previous checkpoint intact, no temp file. (Ray then uploads the folder into
    its storage; that upload on a full disk is the manual check in docs/reliability.md.)"""
    pytest.importorskip("ray")
    import torch

    from datakd.checkpoint import CheckpointWriteError, load_checkpoint
    from datakd.pba.trainable import PBATrial

    class Member:  # what save_checkpoint reads of a member: its trainer's state and policy history
        history: ClassVar[list[list[int]]] = [[0] * 4]

        class trainer:
            @staticmethod
            def state_dict() -> dict[str, Any]:
                return {"model": {"w": torch.ones(64, 1024)}, "epoch": 2}

    with tmpfs(tmp_path / "disk", "1m") as disk:
        folder = disk / "checkpoint_000001"
        folder.mkdir()
        PBATrial.save_checkpoint(Member(), str(folder))  # type: ignore[arg-type]
        before = snapshot(folder)
        ballast = fill(disk)
        with pytest.raises(CheckpointWriteError) as info:
            PBATrial.save_checkpoint(Member(), str(folder))  # type: ignore[arg-type]
        ballast.unlink()
        message = str(info.value)
        assert "\n" not in message and f"cannot write {str(folder / 'trainer.pt')!r}" in message
        assert "No space left on device (errno 28); the previous trainer.pt is intact" in message
        assert snapshot(folder) == before and not no_temp_files(folder)
        assert load_checkpoint(folder / "trainer.pt")["epoch"] == 2


def test_a_pba_search_whose_ray_state_a_full_disk_cut_says_so_before_ray_starts(tmp_path: Path) -> None:
    """Ray writes its experiment state in place; a full disk cuts it, and Tuner.restore then starts a
    broken search (seen for real: 'KeyError: policy'). The cut is made the same way here, by the kernel."""
    ray = pytest.importorskip("ray")
    from datakd.faults import StorageError
    from datakd.pba.search import prepare_spec, run_search
    from tests.helpers import tiny_config

    spec = prepare_spec(tiny_config(tmp_path / "unused"), "teacher", epochs=1, train_size=256)
    with tmpfs(tmp_path / "disk", "1m") as disk:
        experiment = disk / "search" / "ray" / "search"
        experiment.mkdir(parents=True)
        state = experiment / "experiment_state-2026-12-05_05-32-25.json"
        ballast = fill(disk)
        ballast.write_bytes(ballast.read_bytes()[: -(8 << 10)])  # 8 kB free: the state needs more
        with pytest.raises(OSError), open(state, "w") as handle:  # as Ray writes it: in place
            handle.write(json.dumps({"trial_data": ["x" * 100] * 200}))
        ballast.unlink()
        with pytest.raises(StorageError) as info:
            run_search(spec, disk / "search", population=2, num_cpus=1, quiet=True)
    message = str(info.value)
    assert "\n" not in message and f"the PBA search state {str(state)!r} is cut short" in message
    assert "delete" in message and not ray.is_initialized()
