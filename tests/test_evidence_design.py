"""The evidence design: fixed seeds, the Pocock boundary and its wording, the restated verdicts of the
committed runs, the controls' recipes, TST's θ gate, EffDstl's cost, DPK's slopes and the raw data."""

from __future__ import annotations

import csv
import gzip
import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.evidence import arms as A  # noqa: E402
from benchmarks.evidence import report  # noqa: E402
from benchmarks.evidence.protocol import arm_config  # noqa: E402
from benchmarks.evidence.run import adaptive_looks, looks_behind, parse_args, record_looks  # noqa: E402
from benchmarks.evidence.stats import (  # noqa: E402
    CONTRADICTED,
    INCONCLUSIVE,
    NOT_EVALUATED,
    REPRODUCED,
    T975,
    judge,
    paired,
    pocock_level,
    t_quantile,
    t_two_sided_p,
)

RESULTS = ROOT / "benchmarks" / "evidence" / "results"
GPU, CPU = RESULTS / "2026-11-30-gpu-default", RESULTS / "2026-11-30-cpu-500img-150ep"


def one_sample(diffs: list[float]):
    return paired(dict(enumerate(diffs)), dict.fromkeys(range(len(diffs)), 0.0))


def test_the_seeds_are_fixed_per_protocol_before_any_run() -> None:
    assert A.design_seeds("cuda") == list(range(10)) and A.design_seeds("cuda:0") == list(range(10))
    assert A.design_seeds("cpu") == list(range(8))
    args = parse_args([])
    assert args.seeds is None and not args.adaptive  # the design's seeds, no adaptive looks by default


def test_pocock_levels_reproduce_the_published_table_and_follow_unequal_looks() -> None:
    # Pocock (1977), two-sided 5 %, equally spaced: 0.0294, 0.0221, 0.0182, 0.0158.
    for looks, level in (
        ((1, 2), 0.0294),
        ((1, 2, 3), 0.0221),
        ((1, 2, 3, 4), 0.0182),
        ((1, 2, 3, 4, 5), 0.0158),
    ):
        assert pocock_level(looks) == pytest.approx(level, abs=2e-4)
    assert pocock_level((8,)) == 0.05
    # Looks at 3 and 8 seeds are less correlated than evenly spaced ones (ρ = √(3/8) against √(1/2)), so
    # they cost more: between the even level and that of two independent tests (1 − √0.95 = 0.0253).
    assert 0.0253 < pocock_level((3, 8)) < 0.0294
    assert pocock_level((3, 4, 6, 8)) < pocock_level((3, 8))


def test_t_quantiles_at_any_level_agree_with_the_table() -> None:
    for df in (1, 2, 7, 30):
        assert t_quantile(0.95, df) == pytest.approx(T975[df - 1], abs=1e-3)
    assert t_two_sided_p(2.365, 7) == pytest.approx(0.05, abs=2e-4)
    assert t_quantile(0.99, 7) == pytest.approx(3.499, abs=1e-3)


def test_one_verdict_function_says_after_a_look_wherever_seeds_were_added() -> None:
    fixed = judge(one_sample([1.0, 1.2, 0.9, 1.1]))
    assert fixed.verdict == REPRODUCED and fixed.words == "reproduced" and not fixed.after_a_look
    looked = judge(one_sample([1.0, 1.2, 0.9, 1.1]), interim=(3,))
    assert looked.looks == (3, 4) and looked.words.startswith("reproduced after a look (seeds 3→4; Pocock")
    # Nominally resolved, not at the boundary: the words carry both.
    borderline = judge(one_sample([0.56, 0.22, 1.05, 1.07, -0.13, -0.14, 0.44, 0.47]), interim=(3, 4, 6))
    assert borderline.nominal == REPRODUCED and borderline.verdict == INCONCLUSIVE
    assert borderline.words.endswith("at a nominal 95 %, reproduced")
    assert judge(one_sample([-1.0, -1.1, -0.9])).verdict == CONTRADICTED
    at_least = judge(one_sample([0.1, -0.1, 0.2]), at_least=True)
    assert at_least.words == "no difference resolved; what '≥' predicts, not a proof"
    gated = judge(one_sample([0.1, 0.2]), reason="θ did not move")
    assert gated.verdict == NOT_EVALUATED and gated.words == "not evaluated (θ did not move)"
    # A look at as many seeds as the final one is no interim look.
    assert judge(one_sample([1.0, 1.2, 0.9]), interim=(3,)).looks == (3,)


def _judged(folder: Path) -> dict[str, Any]:
    looks = report.load_looks(folder)
    if (folder / "runs.csv").is_file():
        judged = report.judged_claims(report.read_rows(folder / "runs.csv"), looks, report.theta_gate(folder))
    else:
        diffs = report.read_diffs(folder / "claims_diffs.csv")
        judged = report.judged_from_diffs(diffs, looks, report.theta_gate(folder))
    return {c.key: j for c, j in judged}


def test_restated_verdicts_of_the_committed_runs() -> None:
    """The CPU "DPK CKA π > fixed π" (3 → 4 → 6 → 8 seeds) does not survive the boundary; both TLCutMix
    verdicts of the default GPU protocol (3 → 8) do; TST > TST fixed is not evaluated (no θ record)."""
    cpu, gpu = _judged(CPU), _judged(GPU)
    pi = cpu["dpk-dpk_fixed"]
    assert pi.looks == (3, 4, 6, 8) and pi.nominal == REPRODUCED and pi.verdict == INCONCLUSIVE
    assert pi.paired.mean == pytest.approx(0.44, abs=0.005) and pi.low < 0 < pi.high
    for key in ("tlcutmix-kd", "tlcutmix-kd_cutmix"):
        assert gpu[key].looks == (3, 8) and gpu[key].verdict == REPRODUCED, key
        assert "after a look" in gpu[key].words
    assert gpu["tst-kd"].verdict == CONTRADICTED
    assert gpu["tst-tst_fixed"].verdict == NOT_EVALUATED == cpu["tst-tst_fixed"].verdict
    assert cpu["wsl_ckm_cheap-wsl"].words == "no difference resolved"  # pre-registered at 8: no look
    assert gpu["kd-ce"].words == "reproduced"


def test_committed_results_md_is_what_report_writes_from_the_raw_rows(tmp_path: Path) -> None:
    written = tmp_path / "RESULTS.md"
    report.write(GPU, written, tmp_path / "evidence.png")
    committed = (ROOT / "benchmarks" / "evidence" / "RESULTS.md").read_text()
    command = (
        "python benchmarks/evidence/report.py --results benchmarks/evidence/results/2026-11-30-gpu-default"
    )
    assert (
        f"`{command} --write benchmarks/evidence/RESULTS.md`" in committed
    )  # one command, from the raw rows
    assert written.read_text().split("\n")[3:] == committed.split("\n")[3:]  # all but that line


RUN9 = RESULTS / "2026-12-05-cpu-effdstl-dpk-sizes"


def test_run9_results_md_and_verdicts_come_from_its_raw_rows(tmp_path: Path) -> None:
    """Run 9 (8 seeds fixed in code): EffDstl's and DPK's size claims, as README and docs/results.md state."""
    written = tmp_path / "RESULTS.md"
    report.write(RUN9, written, tmp_path / "evidence.png")
    committed = (RUN9 / "RESULTS.md").read_text().split("\n")
    ours = written.read_text().split("\n")
    same = [
        i
        for i, line in enumerate(committed)
        if "report.py --results" not in line and "evidence.png" not in line
    ]
    assert [ours[i] for i in same] == [committed[i] for i in same]
    effdstl = _judged(RUN9)["wsl_ckm_cheap-wsl"]
    assert effdstl.paired.n == 8 and not effdstl.after_a_look and effdstl.words == "no difference resolved"
    assert effdstl.paired.mean == pytest.approx(0.10, abs=0.005)
    rows, teachers = (
        report.read_rows(RUN9 / "runs.csv"),
        json.loads((RUN9 / "meta.json").read_text())["teachers"],
    )
    slope = report.slope_difference(rows, teachers)
    assert slope is not None and slope.paired.n == 8 and slope.verdict == INCONCLUSIVE
    assert slope.paired.mean == pytest.approx(0.194, abs=0.0005)
    assert {r["git_revision"] for r in rows if r["arm"] in ("kd", "dpk")} == {"4197d2c"}  # run 8's runs


def _flat(values: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(values, dict):
        out: dict[str, Any] = {}
        for key, value in values.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): values}


def _diff(a: str, b: str, tmp_path: Path) -> set[str]:
    teachers = {role: tmp_path / f"{role}.pt" for role in A.TEACHERS}
    arms = A.scaled_arms(A.EPOCHS)
    cfgs = [
        _flat(arm_config(arm, arms[arm], A.EPOCHS, tmp_path, "cpu", teachers, tmp_path)) for arm in (a, b)
    ]
    keys = set(cfgs[0]) | set(cfgs[1])
    return {k for k in keys if k != "name" and cfgs[0].get(k) != cfgs[1].get(k)}


def _under(paths: set[str], allowed: tuple[str, ...]) -> set[str]:
    """The paths outside the allowed prefixes."""
    return {p for p in paths if not any(p == a or p.startswith(a + ".") for a in allowed)}


def test_each_control_differs_from_its_arm_only_in_the_method(tmp_path: Path) -> None:
    # TST vs its control: f_DE (augmenter) and its search (events); the loss is the same.
    assert _under(_diff("tst", "kd_tstloss", tmp_path), ("augmenter", "events")) == set()
    assert _under(_diff("tst_fixed", "kd_tstloss", tmp_path), ("augmenter",)) == set()
    # DPK vs its control: only the DPK term.
    assert (
        _diff("dpk", "kd_dpkloss", tmp_path)
        and _under(_diff("dpk", "kd_dpkloss", tmp_path), ("loss.dpk",)) == set()
    )


def test_each_control_differs_from_kd_only_in_weights_and_batch_composition(tmp_path: Path) -> None:
    weights = ("loss.ce.weight", "loss.kd.weight")
    assert _under(_diff("kd_dpkloss", "kd", tmp_path), weights) == set()
    tst = _diff("kd_tstloss", "kd", tmp_path)
    assert _under(tst, (*weights, "augmenter.name", "augmenter.fde")) == set()
    assert A.ARMS["kd_tstloss"]["augmenter"] == {"name": "tst", "fde": False}  # [x ‖ x], f_DE = identity
    claims = {c.key for c in A.CLAIMS}
    assert {"tst-kd_tstloss", "dpk-kd_dpkloss", "tst-kd", "dpk-kd"} <= claims


def test_role_wise_arms_differ_only_in_their_schedule(tmp_path: Path) -> None:
    # II-KD with vs without the searched student schedule: only the PBA augmenter.
    assert _under(_diff("iikd_pba", "iikd", tmp_path), ("augmenter",)) == set()
    # The student with its own vs with the teacher's schedule: only the schedule file.
    assert _diff("iikd_pba", "iikd_pba_teacher_schedule", tmp_path) == {"augmenter.schedule"}
    claims = {c.key for c in A.CLAIMS}
    assert {"iikd_pba-iikd", "iikd_pba-iikd_pba_teacher_schedule"} <= claims


def test_effdstl_claim_is_the_papers_with_the_cheap_teacher() -> None:
    main = next(c for c in A.CLAIMS if c.name == "WSL→CKM > WSL")
    assert (main.better, main.worse, main.at_least) == ("wsl_ckm_cheap", "wsl", False)
    assert A.TEACHERS[A.ARMS["wsl_ckm_cheap"]["teacher_role"]] == "resnet8"


def _policy(path: Path, start: float, end: float) -> None:
    rows = ["epoch,call,pass,search_step,op,p,p_apply,m,loss,lr"]
    for value, step in ((start, 0), (end, 16)):
        rows.append(f"8,1,0,{step},ShearX,0.5,{value},0.5,,0.01")
        rows.append(f"8,1,0,{step},Cutout,0.5,0.62,,,0.01")
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as handle:
        handle.write("\n".join(rows) + "\n")


def test_tst_over_tst_fixed_is_judged_only_once_theta_moved(tmp_path: Path) -> None:
    assert "not recorded" in report.theta_gate(tmp_path)
    for seed in range(3):
        _policy(tmp_path / "raw" / f"tst-seed{seed}" / "tst_policy.csv.gz", 0.62, 0.62 + 0.01 * seed)
    assert report.theta_movement(tmp_path) == pytest.approx([0.0, 0.01, 0.02])
    assert "did not measurably move" in report.theta_gate(tmp_path)
    for seed in range(3):
        _policy(tmp_path / "raw" / f"tst-seed{seed}" / "tst_policy.csv.gz", 0.62, 0.70)
    assert report.theta_gate(tmp_path) == ""


def test_an_adaptive_look_is_recorded_and_then_paid_for() -> None:
    rows = [
        {"arm": arm, "seed": s, "top1_last": value}
        for s in range(3)
        for arm, value in (("ce", 80 + s), ("kd", 82 + s), ("tlcutmix", 82 + s + (0.3 if s else -0.3)))
    ]
    arms = ["ce", "kd", "tlcutmix"]
    assert adaptive_looks(rows, arms, [0, 1, 2]) == {"tlcutmix-kd": 3}
    meta: dict[str, Any] = {}
    record_looks(meta, looks_behind(rows, (arms, [0, 1, 2], 5), [("kd", 3), ("tlcutmix", 3)]))
    record_looks(meta, {"tlcutmix-kd": 3})  # the same look twice counts once
    assert meta["looks"] == {"tlcutmix-kd": [3]}
    rows += [
        {"arm": a, "seed": s, "top1_last": 90.0 + s + (0.5 if a == "tlcutmix" else 0)}
        for s in (3, 4)
        for a in arms
    ]
    (_, j), *_ = [(c, j) for c, j in report.judged_claims(rows, meta["looks"]) if c.key == "tlcutmix-kd"]
    assert j.looks == (3, 5) and "after a look" in j.words


def test_dpk_slope_difference_on_synthetic_rows() -> None:
    """DPK's student gains 0.5 point per teacher point, KD's 0.1: the difference 0.4 is resolved."""
    teachers = {"cheap": {"top1_last": 91.0}, "main": {"top1_last": 92.0}, "large": {"top1_last": 94.0}}
    rows = []
    for seed in range(5):
        noise = 0.01 * ((seed * 7) % 5 - 2)
        for role, t in teachers.items():
            x = t["top1_last"] - 91.0
            rows.append({"arm": report.SIZE_ARMS["kd"][role], "seed": seed, "top1_last": 85 + 0.1 * x + seed})
            dpk = 85 + (0.5 + noise) * x + seed
            rows.append({"arm": report.SIZE_ARMS["dpk"][role], "seed": seed, "top1_last": dpk})
    j = report.slope_difference(rows, teachers)
    assert j is not None and j.paired.n == 5
    assert j.paired.mean == pytest.approx(0.4, abs=0.02) and j.verdict == REPRODUCED
    assert report.slope_difference(rows, {"main": {"top1_last": 92.0}}) is None  # needs three sizes
    assert "better teacher, better student" in "\n".join(report.slope_section(rows, teachers))
    for arm in (*report.SIZE_ARMS["kd"].values(), *report.SIZE_ARMS["dpk"].values()):
        assert arm in A.ARMS
    assert {A.TEACHERS[A.ARMS[a].get("teacher_role", "main")] for a in report.SIZE_ARMS["dpk"].values()} == {
        "resnet8",
        "resnet20",
        "resnet32",
    }


def test_teacher_cost_saved_from_the_runs_summaries() -> None:
    rows = [
        {"arm": arm, "seed": s, "top1_last": 88.0, "device_hours": hours}
        for s in range(3)
        for arm, hours in (("wsl", 0.010 + 0.001 * s), ("wsl_ckm_cheap", 0.008 + 0.001 * (s % 2)))
    ]
    teachers = {"main": {"student": "resnet20"}, "cheap": {"student": "resnet8"}}
    text = "\n".join(report.teacher_cost_saved(rows, teachers))
    # Differences 7.2, 7.2, 14.4 s: mean 9.6, sd 4.157, t(0.975, 2) = 4.303 → ±10.33 s; wsl runs 39.6 s.
    assert "+9.6 s, 95 % [-0.7, +19.9] s, 24% of a `wsl` run's 40 s" in text
    # ResNet-8 / ResNet-20 on 1×28×28: 18,691,840 / 62,043,904 FLOPs = 0.30; 0.8 × (1 − 0.30) = 56 %.
    assert "serves 80% of the teacher forward passes at 0.30× the main teacher's (resnet20)" in text
    assert "saving 56%" in text


def test_raw_rows_and_curves_are_kept_compressed(tmp_path: Path) -> None:
    from benchmarks.evidence.run import Protocol, Runner
    from datakd.sweep import plan

    args = parse_args(["--out", str(tmp_path / "out")])
    runner = Runner(args, Protocol(2, 1, 300, None, None, "cpu"))
    run = plan(tmp_path / "arms" / "tst", [3], [])[0]
    run.run_dir.mkdir(parents=True)
    (run.run_dir / "summary.json").write_text(json.dumps({"top1_last": 80.0, "device_hours": 0.01}))
    (run.run_dir / "metrics.csv").write_text("epoch,top1\n1,50\n2,80\n")
    (run.run_dir / "tst_policy.csv").write_text("epoch,op\n")
    runner.keep_raw("tst", run)
    raw = tmp_path / "out" / "raw" / "tst-seed3"
    assert json.loads((raw / "summary.json").read_text())["device_hours"] == 0.01
    with gzip.open(raw / "metrics.csv.gz", "rt") as handle:
        assert handle.read() == "epoch,top1\n1,50\n2,80\n"
    assert (raw / "tst_policy.csv.gz").is_file()


def test_a_runs_csv_begun_by_an_older_runner_keeps_its_header(tmp_path: Path) -> None:
    path = tmp_path / "runs.csv"
    path.write_text("arm,seed,top1_last\nkd,0,88.0\n")
    report.append_row(path, {"arm": "kd", "seed": 1, "top1_last": 88.5, "device_hours": 0.1})
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[-1] == {"arm": "kd", "seed": "1", "top1_last": "88.5"}


def test_a_run_keeps_the_revision_that_launched_it_not_the_recorders(tmp_path: Path) -> None:
    """A finished run found through a shared --work is recorded with its launcher's revision, or "unknown"."""
    from benchmarks.evidence.run import Protocol, Runner, revision_file
    from datakd.sweep import plan

    args = parse_args(["--out", str(tmp_path / "out"), "--revision", "bbbbbbb"])
    runner = Runner(args, Protocol(2, 1, 300, None, None, "cpu"))
    launched, older = plan(tmp_path / "arms" / "kd", [0, 1], [])
    revision_file(launched).parent.mkdir(parents=True)
    revision_file(launched).write_text("aaaaaaa\n")
    assert runner.revision_of(launched) == "aaaaaaa"
    assert runner.revision_of(older) == "unknown"
    assert revision_file(launched).parent == launched.run_dir.parent  # beside the run folder, not in it
