"""The dense evidence runner's design and report: fixed seeds, recipes from the shipped test-bed ones under
the epoch-scaling rule, claims judged by the one verdict function, the report computed from runs.csv alone."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml

from benchmarks.evidence import dense
from benchmarks.evidence.stats import judge, paired


def test_every_arm_and_claim_names_a_shipped_recipe_and_a_known_arm() -> None:
    def task(arm: str) -> str:
        return dense.TEACHERS[dense.ARMS[arm][0]][0]

    for arm, (role, recipe, *_) in dense.ARMS.items():
        values = yaml.safe_load((dense.RECIPES / recipe).read_text())
        assert values["task"] == task(arm) and role in dense.TEACHERS
    for better, worse, _ in dense.CLAIMS:
        assert better in dense.ARMS and worse in dense.ARMS and task(better) == task(worse)
    for first, second, _ in dense.GAIN_CLAIMS:
        assert set(first) | set(second) <= set(dense.ARMS)
    assert all(p.seeds >= 2 and set(p.arms) <= set(dense.ARMS) for p in dense.PROTOCOLS.values())
    assert set(dense.BASELINE_ARMS) <= set(dense.CPU_ARMS)


def test_students_follow_the_scaling_rule_and_the_teacher_keeps_its_steps(tmp_path: Path) -> None:
    student = dense.recipe_for("retinanet_kd.yaml", tmp_path / "s", 12, 3, "cpu", {})
    values = yaml.safe_load(student.read_text())
    assert values["epochs"] == 24 and values["schedule"]["scale"] == 0.5 and values["seed"] == 3
    teacher = dense.recipe_for("retinanet_teacher.yaml", tmp_path / "t", 36, 0, "cpu", {}, scale=False)
    values = yaml.safe_load(teacher.read_text())
    assert values["epochs"] == 36 and "scale" not in values["schedule"]
    assert values["schedule"]["milestones"] == [16, 22]
    tst = dense.recipe_for(
        "tst_retinanet_kd.yaml", tmp_path / "x", 12, 0, "cpu", {"augmenter": {"encoders": "E"}}
    )
    values = yaml.safe_load(tst.read_text())
    assert (
        values["augmenter"]["encoders"] == "E" and values["augmenter"]["name"] == "tst"
    )  # merged, not replaced


def write_runs(out: Path, rows: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "runs.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, dense.COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({**{c: "" for c in dense.COLUMNS}, **row})
    meta = {"protocol": "cpu", "sizes": dense.PROTOCOLS["cpu"].__dict__}
    (out / "meta.json").write_text(json.dumps(meta))


def test_report_states_the_gap_and_judges_each_claim_from_runs_csv(tmp_path: Path) -> None:
    student = {0: 3.0, 1: 3.4, 2: 2.9}
    fgd = {0: 4.1, 1: 4.4, 2: 4.0}
    rows = [{"arm": "det_student", "seed": s, "task": "detection", "metric_last": v, "metric_best": v}
            for s, v in student.items()]  # fmt: skip
    rows += [{"arm": "det_fgd", "seed": s, "task": "detection", "metric_last": v, "metric_best": v + 0.1}
             for s, v in fgd.items()]  # fmt: skip
    rows.append(
        {"arm": "teacher_detection", "seed": 0, "task": "detection", "metric_last": 9.0, "metric_best": 9.0}
    )
    write_runs(tmp_path, rows)
    text = dense.report(tmp_path)
    assert "teacher 9.00, plain student 3.10 ± 0.26: gap +5.90" in text
    expected = judge(paired(fgd, student))
    assert f"| FGD > plain student (RetinaNet, mAP) | 3 | +{expected.paired.mean:.2f} |" in text
    assert expected.words in text and expected.verdict == "reproduced"
    assert "det_kd >" not in text  # a claim without runs is left out, not invented
    assert (tmp_path / "RESULTS.md").read_text() == text


def test_the_gap_claim_compares_gains_paired_by_seed(tmp_path: Path) -> None:
    runs = {
        "det_fgd": {0: 3.0, 1: 3.2, 2: 3.1},
        "det_fgd_dpk": {0: 3.1, 1: 3.2, 2: 3.2},
        "det_fgd_large": {0: 3.5, 1: 3.6, 2: 3.4},
        "det_fgd_dpk_large": {0: 4.0, 1: 4.0, 2: 3.8},
    }
    rows = [{"arm": arm, "seed": s, "task": "detection", "metric_last": v, "metric_best": v}
            for arm, values in runs.items() for s, v in values.items()]  # fmt: skip
    write_runs(tmp_path, rows)
    text = dense.report(tmp_path)
    large = {s: runs["det_fgd_dpk_large"][s] - runs["det_fgd_large"][s] for s in range(3)}
    gains = {s: large[s] - (runs["det_fgd_dpk"][s] - runs["det_fgd"][s]) for s in range(3)}
    expected = judge(paired(gains, dict.fromkeys(range(3), 0.0)))
    claim = "DPK's gain over FGD is larger from the larger teacher (004 Table 4)"
    assert f"| {claim} | 3 | +{expected.paired.mean:.2f} |" in text


def test_collect_keeps_each_finished_runs_record_and_the_report_says_whether_theta_moved(
    tmp_path: Path,
) -> None:
    """OUT/raw gets every finished run's summary, config, curves and θ trajectory (gzipped), and the report
    reads θ's movement from there: a run whose policy barely moved is called not moved."""
    import gzip

    header = "epoch,call,pass,search_step,op,p,p_apply,m,loss,lr\n"
    moves = {0: 0.02, 1: 0.09}
    for seed, move in moves.items():
        run_dir = tmp_path / "runs" / f"det_tst_kd-seed{seed}"
        run_dir.mkdir(parents=True)
        (run_dir / "summary.json").write_text(
            json.dumps(
                {
                    "status": "finished",
                    "map_last": 4.0 + seed,
                    "map_best": 4.5,
                    "epochs": 12,
                    "wall_seconds": 9.0,
                }
            )
        )
        (run_dir / "config.yaml").write_text("seed: 0\n")
        (run_dir / "metrics.csv").write_text("epoch,test_map\n1,0.5\n")
        (run_dir / "tst_policy.csv").write_text(
            header
            + "3,1,0,0,Rotate,0.5,0.62,0.5,,0.01\n3,1,0,0,Equalize,0.5,0.62,,,0.01\n"
            + f"6,2,1,500,Rotate,0.5,0.62,{0.5 + move},1.0,0.01\n6,2,1,500,Equalize,0.5,0.63,,1.0,0.01\n"
        )
    unfinished = tmp_path / "runs" / "det_kd-seed0"
    unfinished.mkdir()
    (unfinished / "metrics.csv").write_text("epoch\n1\n")
    rows = dense.collect(tmp_path)
    assert sorted((r["arm"], r["seed"]) for r in rows) == [("det_tst_kd", 0), ("det_tst_kd", 1)]
    raw = tmp_path / "raw" / "det_tst_kd-seed1"
    assert sorted(p.name for p in raw.iterdir()) == [
        "config.yaml", "metrics.csv.gz", "summary.json", "tst_policy.csv.gz"
    ]  # fmt: skip
    with gzip.open(raw / "metrics.csv.gz", "rt") as handle:
        assert handle.read() == "epoch,test_map\n1,0.5\n"
    assert not (tmp_path / "raw" / "det_kd-seed0").exists()
    found = dense.theta_moves(tmp_path)["det_tst_kd"]
    assert sorted(found) == [0, 1] and all(abs(found[s] - moves[s]) < 1e-9 for s in moves)
    text = dense.report(tmp_path)
    assert "| det_tst_kd | 0.020, 0.090 | 0.055 | yes |" in text
