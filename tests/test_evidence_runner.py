"""The evidence benchmark: its statistics, its protocol scaling, and a real smoke run."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.evidence import arms as A  # noqa: E402
from benchmarks.evidence.run import adaptive_seeds  # noqa: E402
from benchmarks.evidence.stats import CONTRADICTED, INCONCLUSIVE, REPRODUCED, paired, t975  # noqa: E402


def test_paired_interval_against_hand_computation() -> None:
    # diffs 1, 2, 3: mean 2, sample std 1, half-width t_{0.975,2}·1/√3 = 4.303/1.732 = 2.4843
    result = paired({0: 11.0, 1: 12.0, 2: 13.0}, {0: 10.0, 1: 10.0, 2: 10.0})
    assert result.diffs == (1.0, 2.0, 3.0)
    assert result.mean == pytest.approx(2.0) and result.std == pytest.approx(1.0)
    assert result.low == pytest.approx(2.0 - 4.303 / math.sqrt(3), abs=1e-9)
    assert result.high == pytest.approx(2.0 + 4.303 / math.sqrt(3), abs=1e-9)
    assert result.verdict == INCONCLUSIVE  # −0.48 < 0 < 4.48


def test_verdicts_pair_by_seed_and_need_two_seeds() -> None:
    # A constant +0.5 gain under a large seed effect: unpaired it would be noise, paired it is resolved.
    better = {s: 80.0 + 5 * s + 0.5 + 0.01 * s for s in range(4)}
    worse = {s: 80.0 + 5 * s for s in range(4)}
    assert paired(better, worse).verdict == REPRODUCED
    assert paired(worse, better).verdict == CONTRADICTED
    only_common = paired({0: 1.0, 1: 2.0, 7: 9.0}, {1: 1.0, 2: 5.0, 7: 3.0})
    assert only_common.seeds == (1, 7) and only_common.diffs == (1.0, 6.0)
    single = paired({0: 2.0}, {0: 1.0})
    assert single.low is None and single.verdict == INCONCLUSIVE


def test_t_quantiles() -> None:
    assert t975(1) == 12.706 and t975(7) == 2.365
    assert t975(60) == pytest.approx(2.0003, abs=1e-3)  # table value 2.000
    assert t975(120) == pytest.approx(1.9799, abs=1e-3)
    with pytest.raises(ValueError):
        t975(0)


def test_epoch_settings_keep_their_fraction_of_training() -> None:
    arms = A.scaled_arms(60)
    assert arms["tst"]["events"][0]["at"] == [8, 22]  # 30/240 and 90/240 of 60
    for arm in ("wsl_ckm", "wsl_ckm_cheap"):  # one spec, two arms: each scaled once
        assert arms[arm]["events"][0]["at"] == 48 == arms[arm]["events"][1]["at"]  # 192/240
    assert arms["dkd"]["loss"]["dkd"]["warmup_epochs"] == pytest.approx(5.0)  # 20/240
    short = A.scaled_arms(2)
    assert short["tst"]["events"][0]["at"] == [1] and short["wsl_ckm"]["events"][0]["at"] == 1
    assert A.ARMS["tst"]["events"][0]["at"] == [30, 90]  # the table itself is not modified


def test_every_claim_names_two_arms() -> None:
    for claim in A.CLAIMS:
        assert claim.better in A.ARMS and claim.worse in A.ARMS, claim


def test_adaptive_seeds_only_for_inconclusive_claims() -> None:
    rows = [
        {"arm": arm, "seed": s, "top1_last": value}
        for s in range(3)
        for arm, value in (("ce", 80 + s), ("kd", 82 + s), ("tlcutmix", 82 + s + (0.3 if s else -0.3)))
    ]
    extra = adaptive_seeds(rows, ["ce", "kd", "tlcutmix"], [0, 1, 2], 5)
    # KD > CE is resolved (+2 every seed); TLCutMix − KD = −0.3, +0.3, +0.3 is not: both arms get seeds 3, 4.
    assert extra == [("kd", 3), ("tlcutmix", 3), ("kd", 4), ("tlcutmix", 4)]
    # Not judged before both arms have every first seed.
    assert adaptive_seeds(rows[:-1], ["ce", "kd", "tlcutmix"], [0, 1, 2], 5) == []


def test_smoke_run_end_to_end(fmnist_root: Path, tmp_path: Path) -> None:
    """The whole pipeline on real images: teacher, three arms, runs.csv, RESULTS.md and the figure."""
    out = tmp_path / "ev"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    script = str(ROOT / "benchmarks" / "evidence" / "run.py")
    base = [sys.executable, script, "--out", str(out)]
    cmd = [*base, "--smoke", "--data-root", str(fmnist_root), "--jobs", "2"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    with open(out / "runs.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["arm"] for r in rows) == sorted(A.SMOKE_ARMS)
    for row in rows:
        assert 0.0 <= float(row["top1_last"]) <= 100.0 and 0.0 <= float(row["train_top1"]) <= 100.0
        assert row["epochs"] == "2" and row["train_size"] == "300"
        assert row["git_revision"] not in ("", "unknown")  # trained here, so written beside the run
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)  # all cached: skips
    assert again.returncode == 0 and "seed 0: top-1" not in again.stdout, again.stdout
    # Another student test cadence re-uses the teacher: --eval-every is not part of a teacher's hash.
    protocol = ["--epochs", "2", "--teacher-epochs", "1", "--train-size", "300", "--teacher-size", "500"]
    other = [*protocol, "--test-size", "500", "--seeds", "0", "--no-adaptive", "--eval-every", "2"]
    cmd = [sys.executable, script, "--out", str(tmp_path / "ev2"), "--work", str(out / "work"), *other]
    done = subprocess.run(
        [*cmd, "--arms", "ce", "--data-root", str(fmnist_root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and "teacher main (resnet20): cached" in done.stdout, (
        done.stdout + done.stderr
    )
    results, figure = tmp_path / "RESULTS.md", tmp_path / "fig.png"
    agg = [*base, "--aggregate-only", "--results", str(results), "--figure", str(figure)]
    done = subprocess.run(agg, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    text = results.read_text()
    assert "| KD > CE (`kd` − `ce`)" in text and "--smoke" in text
    assert figure.stat().st_size > 10_000


def _fake_out(path: Path, protocol: dict, rows: list[tuple[str, int, float]], command: str) -> Path:
    from benchmarks.evidence import report

    report.write_json(
        {"protocol": protocol, "invocations": [{"command": command, "started": 0.0}]}, path / "meta.json"
    )
    for arm, seed, top1 in rows:
        report.append_row(path / "runs.csv", {"arm": arm, "seed": seed, "top1_last": top1})
    return path


def test_merge_adds_the_other_outs_runs_and_commands_and_refuses_another_protocol(tmp_path: Path) -> None:
    from benchmarks.evidence import report

    protocol = {"epochs": 40, "train_size": 1000}
    main = _fake_out(tmp_path / "main", protocol, [("ce", 0, 80.0), ("kd", 0, 81.0)], "run A")
    other = _fake_out(tmp_path / "other", protocol, [("kd", 0, 99.0), ("ce", 2, 79.0)], "run B")
    assert "merged 1 runs" in report.merge(main, other)
    rows = {(r["arm"], int(r["seed"])): float(r["top1_last"]) for r in report.read_rows(main / "runs.csv")}
    assert rows == {("ce", 0): 80.0, ("kd", 0): 81.0, ("ce", 2): 79.0}  # main's kd seed 0 kept
    commands = [inv["command"] for inv in json.loads((main / "meta.json").read_text())["invocations"]]
    assert commands == ["run A", "run B"]
    report.merge(main, other)  # a second merge adds nothing
    assert len(report.read_rows(main / "runs.csv")) == 3
    assert len(json.loads((main / "meta.json").read_text())["invocations"]) == 2
    stranger = _fake_out(tmp_path / "stranger", {"epochs": 60}, [("ce", 1, 70.0)], "run C")
    with pytest.raises(SystemExit, match="another protocol"):
        report.merge(main, stranger)


def test_merge_accepts_a_teacher_role_added_later_and_refuses_a_changed_one(tmp_path: Path) -> None:
    from benchmarks.evidence import report

    before = {"epochs": 150, "teachers": {"main": "resnet20", "weak": "resnet14"}}
    main = _fake_out(tmp_path / "main", before, [("wsl", 0, 83.0)], "run A")
    later = {"epochs": 150, "teachers": {"main": "resnet20", "weak": "resnet14", "cheap": "resnet8"}}
    other = _fake_out(tmp_path / "other", later, [("wsl_ckm_cheap", 0, 83.5)], "run B")
    for out, roles in ((main, ("main", "weak")), (other, ("main", "cheap"))):
        meta = json.loads((out / "meta.json").read_text())
        meta["teachers"] = {role: {"top1_last": 90.0 + i, "from": out.name} for i, role in enumerate(roles)}
        report.write_json(meta, out / "meta.json")
    assert "merged 1 runs" in report.merge(main, other)
    merged = json.loads((main / "meta.json").read_text())
    assert merged["protocol"]["teachers"] == later["teachers"]
    assert {role: t["from"] for role, t in merged["teachers"].items()} == {
        "main": "main",
        "weak": "main",
        "cheap": "other",
    }
    changed = {"epochs": 150, "teachers": {"main": "resnet32"}}
    stranger = _fake_out(tmp_path / "stranger", changed, [("kd", 0, 80.0)], "run C")
    with pytest.raises(SystemExit, match="another protocol"):
        report.merge(main, stranger)


def test_a_rerun_with_fewer_teachers_keeps_the_earlier_teachers_in_meta(tmp_path: Path) -> None:
    from benchmarks.evidence.run import record_teachers

    for role, top1 in (("main", 92.2), ("weak", 92.5)):
        (tmp_path / role).mkdir()
        (tmp_path / role / "summary.json").write_text(json.dumps({"top1_last": top1}))
    meta: dict = {}
    record_teachers(meta, {"main": tmp_path / "main" / "last.pt", "weak": tmp_path / "weak" / "last.pt"})
    record_teachers(meta, {"main": tmp_path / "main" / "last.pt"})  # a later invocation without wsl_ckm
    assert meta["teachers"] == {"main": {"top1_last": 92.2}, "weak": {"top1_last": 92.5}}
