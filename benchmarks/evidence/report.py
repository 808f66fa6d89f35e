"""OUT/runs.csv in, RESULTS.md and the figure out: the arm table, the claims with their verdicts.

Everything here reads only what a results folder holds (runs.csv, meta.json, looks.json, raw/), so results
brought back from another machine (without checkpoints) are aggregated here, by one command:

    python benchmarks/evidence/report.py --results DIR [--write RESULTS.md] [--figure evidence.png]

Every verdict word comes from `stats.judge` (one function): a claim whose seeds were added after looking at
it (meta.json "looks", or DIR/looks.json for runs made before looks were recorded) is judged at the Pocock
level for its looks and says "after a look". A folder without runs.csv but with claims_diffs.csv (per-seed
differences transcribed from an older RESULTS.md whose raw rows were lost) gets VERDICTS.md, claims only.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script: the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.evidence import arms as A
from benchmarks.evidence.stats import (
    Judged,
    Paired,
    judge,
    paired,
)
from datakd.checkpoint import atomic_write_text
from datakd.faults import STORAGE_EXIT_CODE, storage_fault

FIELDS = (
    "arm", "seed", "top1_last", "top1_best", "train_top1", "wall_s", "images_per_sec", "git_revision",
    "epochs", "train_size", "test_images", "device", "device_hours",
)  # fmt: skip
# "Measurably moved": the largest change of any op's apply probability or magnitude between θ before the
# first search and after the last, median over the TST runs. 0.05 is half a magnitude bin (bins are 0.1
# wide) and a fifth of the range p_apply has under rbd_mode "code" (0.5 to 0.73); below it the searched
# and the fixed f_DE are the same augmentation and TST > TST fixed is an A/A comparison.
THETA_MOVED = 0.05
POLICY = "tst_policy.csv"


def write_json(values: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(values, indent=1, default=str) + "\n", path)


def device_name(device: str) -> str:
    if not device.startswith("cuda"):
        return "no GPU used"
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CUDA not available"


def append_row(path: Path, row: dict[str, Any]) -> None:
    """One finished run, written at once so a benchmark cut by a timeout keeps its rows. The file is
    replaced whole (temp file, rename), not appended to: a full disk would leave a torn last row.
    A file begun with fewer columns (an older runner) keeps its header."""
    old = ""
    if path.is_file():
        with open(path, newline="") as handle:
            old = handle.read()
    fields = tuple(next(csv.reader(io.StringIO(old)), FIELDS)) if old else FIELDS
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=fields)
    if not old:
        writer.writeheader()
    writer.writerow({k: row.get(k, "") for k in fields})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(old + buffer.getvalue(), path)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of runs.csv; a run recorded twice (a rerun) counts once, the last row winning."""
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        rows = {(r["arm"], int(r["seed"])): r for r in csv.DictReader(handle) if r.get("top1_last")}
    return list(rows.values())


def same_protocol(a: dict[str, Any], b: dict[str, Any]) -> dict[str, str] | None:
    """None if `a` and `b` differ; else the union of their teacher roles. A teacher role only one side
    has (an arm added later, with its own teacher) leaves every shared arm's meaning unchanged; a role
    both have must name the same model."""
    ta, tb = a.get("teachers") or {}, b.get("teachers") or {}
    rest = ({k: v for k, v in p.items() if k != "teachers"} for p in (a, b))
    if next(rest) != next(rest) or any(ta[r] != tb[r] for r in set(ta) & set(tb)):
        return None
    return {**ta, **tb}


def merge(out: Path, other: Path) -> str:
    """Add `other`'s runs (rows) and invocations to `out`: one RESULTS.md for runs made in parallel.

    The two must share the protocol (same teachers, subset, epochs, evaluation), or pairing by seed means
    nothing; a run present in both keeps `out`'s row.
    """
    meta, other_meta = (json.loads((d / "meta.json").read_text()) for d in (out, other))
    teachers = same_protocol(meta.get("protocol") or {}, other_meta.get("protocol") or {})
    if teachers is None:
        raise SystemExit(f"--merge: {other} ran another protocol than {out}; not merged")
    if teachers:
        meta["protocol"]["teachers"] = teachers
    # The trained teachers' summaries (test top-1) of roles only `other` used.
    meta["teachers"] = {**other_meta.get("teachers", {}), **meta.get("teachers", {})}
    have = {(r["arm"], int(r["seed"])) for r in read_rows(out / "runs.csv")}
    new = [r for r in read_rows(other / "runs.csv") if (r["arm"], int(r["seed"])) not in have]
    for row in new:
        append_row(out / "runs.csv", row)
    known = {inv["command"] for inv in meta["invocations"]}
    meta["invocations"] += [inv for inv in other_meta["invocations"] if inv["command"] not in known]
    write_json(meta, out / "meta.json")
    return f"merged {len(new)} runs of {other} into {out}"


def scores(rows: list[dict[str, Any]], key: str = "top1_last") -> dict[str, dict[int, float]]:
    """arm → seed → value."""
    out: dict[str, dict[int, float]] = {}
    for row in rows:
        out.setdefault(row["arm"], {})[int(row["seed"])] = float(row[key])
    return out


def mean_std(values: list[float]) -> tuple[float, float | None]:
    n = len(values)
    mean = sum(values) / n
    return mean, (math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None)


def _pm(values: list[float], digits: int = 2) -> str:
    if not values:
        return "–"
    mean, std = mean_std(values)
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def claim_results(rows: list[dict[str, Any]]) -> list[tuple[A.Claim, Paired]]:
    top1 = scores(rows)
    return [
        (c, paired(top1[c.better], top1[c.worse])) for c in A.CLAIMS if c.better in top1 and c.worse in top1
    ]


# ------------------------------------------------------------------ looks and the TST gate
def load_looks(out: Path, meta: dict[str, Any] | None = None) -> dict[str, list[int]]:
    """Claim key → seeds at each interim look: meta.json's "looks" (the runner records them) and
    DIR/looks.json (written by hand for runs made before looks were recorded), merged."""
    if meta is None:
        meta_file = out / "meta.json"
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    looks: dict[str, set[int]] = {k: set(v) for k, v in (meta.get("looks") or {}).items()}
    file = out / "looks.json"
    if file.is_file():
        for key, seeds in json.loads(file.read_text())["looks"].items():
            looks.setdefault(key, set()).update(seeds)
    return {k: sorted(v) for k, v in looks.items()}


def _read_text(path: Path) -> str:
    if path.suffix != ".gz":
        return path.read_text()
    with gzip.open(path, "rt") as handle:
        return handle.read()


def policy_movement(text: str) -> float:
    """The largest change of any op's p_apply or m between the first and the last θ of a tst_policy.csv."""
    rows = list(csv.DictReader(text.splitlines()))
    if not rows:
        return 0.0
    by_op: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_op.setdefault(row["op"], []).append(row)
    moved = 0.0
    for history in by_op.values():
        for key in ("p_apply", "m"):
            if history[0].get(key) not in (None, "") and history[-1].get(key) not in (None, ""):
                moved = max(moved, abs(float(history[-1][key]) - float(history[0][key])))
    return moved


def theta_movement(out: Path, arm: str = "tst") -> list[float]:
    """Per TST run with a recorded θ trajectory (raw/ARM-seedS/tst_policy.csv[.gz]): how far θ moved."""
    paths = sorted((out / "raw").glob(f"{arm}-seed*/{POLICY}*"))
    return [policy_movement(_read_text(path)) for path in paths]


def theta_gate(out: Path | None) -> str:
    """Why TST > TST fixed is not evaluated, or "" when the search measurably moved θ (THETA_MOVED)."""
    moves = theta_movement(out) if out is not None else []
    if not moves:
        return "θ's trajectory (tst_policy.csv) was not recorded, so whether the search moved θ is unknown"
    median = statistics.median(moves)
    if median < THETA_MOVED:
        return f"the search did not measurably move θ: median largest change {median:.3f} < {THETA_MOVED}"
    return ""


def judged_claims(
    rows: list[dict[str, Any]], looks: dict[str, list[int]], gate: str = ""
) -> list[tuple[A.Claim, Judged]]:
    """Every claim both of whose arms ran, with its verdict under its design (`stats.judge`)."""
    return [
        (c, judge(p, tuple(looks.get(c.key, ())), c.at_least, gate if c.needs_theta_moved else ""))
        for c, p in claim_results(rows)
    ]


def judged_from_diffs(diffs: dict[str, dict[int, float]], looks: dict[str, list[int]], gate: str = ""):
    """The same, from per-seed differences only (claim key → seed → difference)."""
    out = []
    for claim in A.CLAIMS:
        if claim.key in diffs:
            p = paired(diffs[claim.key], dict.fromkeys(diffs[claim.key], 0.0))
            reason = gate if claim.needs_theta_moved else ""
            out.append((claim, judge(p, tuple(looks.get(claim.key, ())), claim.at_least, reason)))
    return out


def _interval(p: Paired | Judged) -> str:
    return "–" if p.low is None else f"[{p.low:+.2f}, {p.high:+.2f}]"


def _boundary(j: Judged) -> str:
    if not j.after_a_look:
        return "fixed seeds"
    looks = "→".join(map(str, j.looks))
    return looks if j.low is None else f"{looks}: {1 - j.level:.1%} {_interval(j)}"


def _shown(folder: Path | None) -> str:
    """A results folder as the command that wrote it named it: relative to the repository if inside."""
    if folder is None:
        return "OUT"
    try:
        return folder.resolve().relative_to(A.HERE.parents[1]).as_posix()
    except ValueError:
        return str(folder)


def claims_table(
    rows: list[dict[str, Any]], looks: dict[str, list[int]] | None = None, gate: str = "",
    judged: list[tuple[A.Claim, Judged]] | None = None,
) -> list[str]:  # fmt: skip
    lines = [
        "| claim | paper | seeds | per-seed difference | mean difference | 95 % t-interval | looks: "
        "interval at the boundary | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    judged = judged_claims(rows, looks or {}, gate) if judged is None else judged
    for claim, j in judged:
        p = j.paired
        diffs = ", ".join(f"{d:+.2f}" for d in p.diffs)
        lines.append(
            f"| {claim.name} (`{claim.better}` − `{claim.worse}`) | {claim.paper} | {p.n} | {diffs} | "
            f"{p.mean:+.2f} | {_interval(p)} | {_boundary(j)} | **{j.words}** |"
        )
    ran, done = scores(rows), {c.key for c, _ in judged}
    for claim in A.CLAIMS:
        if claim.key in done:
            continue
        missing = [a for a in (claim.better, claim.worse) if a not in ran]
        why = f"no runs of {', '.join(missing)}" if missing else "no paired seeds"
        lines.append(
            f"| {claim.name} (`{claim.better}` − `{claim.worse}`) | {claim.paper} | 0 | – | – | – | – | "
            f"**not run** ({why}) |"
        )
    return lines


def claims_text(rows: list[dict[str, Any]], looks: dict[str, list[int]] | None = None, gate: str = "") -> str:
    return "\n".join(
        f"{c.name:<36} n={j.paired.n}  {j.paired.mean:+6.2f}  {_interval(j.paired):<18} {j.words}"
        for c, j in judged_claims(rows, looks or {}, gate)
    )


# ------------------------------------------------------------------ EffDstl's cost, DPK's slopes
def teacher_cost_saved(rows: list[dict[str, Any]], teachers: dict[str, Any]) -> list[str]:
    """EffDstl's efficiency claim: what the cheap teacher saves, at the accuracy the claim states.

    Measured: each run's wall time (summary.json's device-hours), paired by seed, WSL (the main teacher
    throughout) minus WSL→CKM from the ResNet-8 (the cheap teacher until the switch). Estimated: the share
    of teacher forward passes the cheap teacher serves (192/240 of training) × its forward FLOPs relative to
    the main teacher's. FLOPs, not the teachers' training throughput: the two teachers may have trained
    under different loads (they did in run 9), and a count does not depend on the load.
    """
    main_arm, cheap_arm = "wsl", "wsl_ckm_cheap"
    hours = scores([r for r in rows if r.get("device_hours") not in (None, "")], "device_hours")
    lines = ["## EffDstl: teacher inference cost saved", ""]
    if main_arm not in scores(rows) or cheap_arm not in scores(rows):
        return [*lines, f"Not run (needs arms {main_arm} and {cheap_arm}).", ""]
    if main_arm in hours and cheap_arm in hours:
        p = paired(hours[main_arm], hours[cheap_arm])
        wall = statistics.mean(hours[main_arm][s] for s in p.seeds) * 3600
        interval = "" if p.low is None else f", 95 % [{p.low * 3600:+.1f}, {p.high * 3600:+.1f}] s"
        lines.append(
            f"Measured wall time per student run, `{main_arm}` − `{cheap_arm}` over {p.n} paired seeds: "
            f"{p.mean * 3600:+.1f} s{interval}, {p.mean * 3600 / wall:.0%} of a `{main_arm}` run's "
            f"{wall:.0f} s "
            "(several runs share the device, so this is a cost indication)."
        )
    else:
        lines.append("Measured device-hours: not recorded (runs.csv without device_hours: an older runner).")
    main, cheap = teachers.get("main", {}).get("student"), teachers.get("cheap", {}).get("student")
    if main and cheap:
        share = A.WSL_CKM["events"][0]["at"] / A.RECIPE_EPOCHS
        ratio = teacher_flops(cheap) / teacher_flops(main)
        lines.append(
            f"Estimated: the cheap teacher ({cheap}) serves {share:.0%} of the teacher forward passes at "
            f"{ratio:.2f}× the main teacher's ({main}) forward FLOPs per image, saving "
            f"{share * (1 - ratio):.0%} of the teacher's inference cost."
        )
    return [*lines, ""]


def teacher_flops(model: str) -> int:
    """Forward FLOPs per image of a protocol teacher on the protocol's input (`arms.INPUT_SHAPE`)."""
    from datakd.models import create
    from datakd.models.cost import forward_flops

    return forward_flops(create(model, 10, **A.GRAY), A.INPUT_SHAPE)


SIZE_ARMS = {"kd": {"cheap": "kd_t8", "main": "kd", "large": "kd_t32"},
             "dpk": {"cheap": "dpk_t8", "main": "dpk", "large": "dpk_t32"}}  # fmt: skip


def _slope(x: list[float], y: list[float]) -> float:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    return sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x)


def slope_difference(rows: list[dict[str, Any]], teachers: dict[str, Any]) -> Judged | None:
    """DPK's "better teacher, better student": per seed, the least-squares slope of student top-1 against
    teacher top-1 over the teacher sizes, DPK's minus KD's; the 95 % t-interval over seeds. None if fewer
    than three teachers with distinct accuracies, or fewer than two seeds with every arm."""
    top1 = scores(rows)
    roles = [r for r in SIZE_ARMS["kd"] if teachers.get(r, {}).get("top1_last") is not None]
    x = [float(teachers[r]["top1_last"]) for r in roles]
    if len(roles) < 3 or len(set(x)) < 3:
        return None
    arms = [SIZE_ARMS[m][r] for m in SIZE_ARMS for r in roles]
    if any(a not in top1 for a in arms):
        return None
    seeds = sorted(set.intersection(*(set(top1[a]) for a in arms)))
    diffs = {
        s: _slope(x, [top1[SIZE_ARMS["dpk"][r]][s] for r in roles])
        - _slope(x, [top1[SIZE_ARMS["kd"][r]][s] for r in roles])
        for s in seeds
    }
    return judge(paired(diffs, dict.fromkeys(diffs, 0.0)))


def slope_section(rows: list[dict[str, Any]], teachers: dict[str, Any]) -> list[str]:
    j = slope_difference(rows, teachers)
    if j is None:
        return []
    p = j.paired
    return [
        "## DPK: better teacher, better student",
        "",
        "Per seed, the slope of student top-1 against teacher top-1 over three teacher sizes "
        f"({', '.join(A.TEACHERS[r] for r in SIZE_ARMS['kd'])}), DPK's minus KD's (points of student per "
        f"point of teacher): {p.mean:+.3f}, 95 % {_interval(p)} over {p.n} seeds: **{j.words}**.",
        "",
    ]


def arm_table(rows: list[dict[str, Any]]) -> list[str]:
    by_arm: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_arm.setdefault(row["arm"], []).append(row)
    kd = scores(rows).get("kd", {})
    lines = [
        "| arm | seeds | test top-1 last | test top-1 best | train top-1 (no aug.) | paired Δ last vs KD | "
        "wall s / run | img/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm in [a for a in A.ARMS if a in by_arm]:
        group = sorted(by_arm[arm], key=lambda r: int(r["seed"]))

        def col(key: str, group: list[dict[str, Any]] = group) -> list[float]:
            return [float(r[key]) for r in group]

        delta = "–"
        if arm != "kd" and kd:
            p = paired({int(r["seed"]): float(r["top1_last"]) for r in group}, kd)
            delta = f"{p.mean:+.2f} (n={p.n})" if p.n else "–"
        lines.append(
            f"| {arm} | {len(group)} | {_pm(col('top1_last'))} | {_pm(col('top1_best'))} | "
            f"{_pm(col('train_top1'))} | {delta} | {_pm(col('wall_s'), 0)} | "
            f"{_pm(col('images_per_sec'), 0)} |"
        )
    return lines


def regime_check(rows: list[dict[str, Any]], teachers: dict[str, Any]) -> list[str]:
    """The regime the claims are about: does the CE student overfit, and does the teacher know more?"""
    ce = [r for r in rows if r["arm"] == "ce"]
    if not ce:
        return []
    train = [float(r["train_top1"]) for r in ce]
    test = [float(r["top1_last"]) for r in ce]
    teacher = teachers.get("main", {}).get("top1_last")
    teacher_text = f"; the teacher: {teacher:.2f} on the test split" if teacher is not None else ""
    return [
        f"**Regime check.** The CE student ends at {_pm(train)} top-1 on its own training images and "
        f"{_pm(test)} on the test split (gap {mean_std(train)[0] - mean_std(test)[0]:.2f} points, "
        f"{len(ce)} seeds){teacher_text}.",
        "",
    ]


def markdown(
    rows: list[dict[str, Any]], meta: dict[str, Any], figure: str, out: Path | None = None, command: str = ""
) -> str:
    proto = meta.get("protocol", {})
    looks = load_looks(out, meta) if out is not None else dict(meta.get("looks") or {})
    gate = theta_gate(out)
    teachers = meta.get("teachers", {})
    teacher_text = "; ".join(
        f"{role} {t.get('student')}: test top-1 {t.get('top1_last', float('nan')):.2f} "
        f"after {t.get('epochs')} epochs"
        for role, t in teachers.items()
    )
    invocations = meta.get("invocations", [])
    commands = "\n".join(inv["command"] for inv in invocations)
    wall = sum(inv.get("wall_s", 0) for inv in invocations)
    revisions = sorted({r.get("git_revision", "") for r in rows})
    started = [inv.get("started") for inv in invocations if inv.get("started")]
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(min(started))) if started else "unknown"
    test = proto.get("test_size") or "all 10,000"
    n = proto.get("eval_every", 1)
    every = f" every {n} epochs and after the last" if n != 1 else " after every epoch"
    size = proto.get("teacher_size")
    teacher_images = f"a {size}-image subset of the" if size else "the full (60,000-image)"
    lines = [
        "# Evidence: the seed papers' claims on Fashion-MNIST",
        "",
        f"Written by `{command or 'python benchmarks/evidence/report.py --results ' + _shown(out)}` from "
        "the folder's runs.csv, "
        "meta.json and looks.json; the runs came from:",
        "",
        "```",
        commands,
        "```",
        "",
        f"Run on {meta.get('machine', 'unknown')}, started {date}, {wall / 60:.1f} min of wall time over "
        f"{len(invocations)} invocation(s); git revision {', '.join(revisions) or meta.get('revision')}.",
        "",
        f"Protocol: teacher {proto.get('teachers', {}).get('main')} trained with CE on "
        f"{teacher_images} training split ({teacher_text}). "
        f"Students {proto.get('student')} on a fixed class-balanced {proto.get('train_size')}-image subset "
        f"of the training split (split_seed {proto.get('split_seed')}), {proto.get('epochs')} epochs, "
        f"evaluated on {test} test images{every}; the number is last-epoch top-1. *train top-1* is the final "
        "student on its own training subset without augmentation (does the student overfit?). A seed fixes "
        "a student's initialisation and data order, so runs of two arms with the same seed are paired. "
        "Arm settings: `benchmarks/evidence/arms.py`; resolved recipes: OUT/recipes/.",
        "",
        f"![per-seed results and paired differences]({figure})",
        "",
        *regime_check(rows, teachers),
        "## Claims",
        "",
        "Per claim: the per-seed differences (first arm − second arm, last-epoch test top-1 points), their "
        "mean and 95 % Student-t interval. **reproduced**: the interval lies above 0; **contradicted**: "
        "below 0; **no difference resolved**: it contains 0. Where seeds were added after looking at a "
        "claim (*looks*: the seeds at each look), the verdict is the interval at the Pocock level for those "
        "looks, and says **after a look** (`benchmarks/evidence/stats.py::judge`). TST > TST fixed is "
        f"evaluated only if the search moved θ measurably (median largest change ≥ {THETA_MOVED}).",
        "",
        *claims_table(rows, looks, gate),
        "",
        *teacher_cost_saved(rows, meta.get("teachers", {})),
        *slope_section(rows, meta.get("teachers", {})),
        "## Arms",
        "",
        "Mean ± sample std over seeds. *paired Δ vs KD* is the mean per-seed difference to KD over the "
        "seeds both ran. wall s / run includes process start-up; img/s is the trainer's training "
        "throughput with several runs sharing the device (a cost indication, not a speed benchmark).",
        "",
        *arm_table(rows),
        "",
    ]
    return "\n".join(lines)


def figure(
    rows: list[dict[str, Any]],
    path: Path,
    teacher_top1: float | None = None,
    looks: dict[str, list[int]] | None = None,
    gate: str = "",
) -> None:
    """Left: per-seed dots and the mean per arm. Right: paired difference per claim with its 95 % interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top1 = scores(rows)
    arms = [a for a in A.ARMS if a in top1]
    results = [(c, j.paired, j.verdict) for c, j in judged_claims(rows, looks or {}, gate)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 0.4 * max(len(arms), len(results)) + 1.8))
    for i, arm in enumerate(arms):
        values = list(top1[arm].values())
        left.scatter(values, [i] * len(values), s=14, color="tab:blue", alpha=0.6, zorder=2)
        left.scatter([sum(values) / len(values)], [i], marker="|", s=300, color="black", zorder=3)
    if teacher_top1 is not None:
        left.axvline(teacher_top1, color="tab:orange", ls="--", lw=1, label=f"teacher {teacher_top1:.2f}")
        left.legend(loc="lower right", fontsize=8)
    left.set_yticks(range(len(arms)), [f"{a} (n={len(top1[a])})" for a in arms])
    left.invert_yaxis()
    left.set_xlabel("test top-1, last epoch (%); dots: seeds, bar: mean")
    left.grid(axis="x", alpha=0.3)
    colours = {"reproduced": "tab:green", "contradicted": "tab:red", "inconclusive": "tab:gray"}
    for i, (_, p, verdict) in enumerate(results):
        right.scatter(p.diffs, [i] * p.n, s=10, color="tab:blue", alpha=0.5, zorder=2)
        if p.low is not None:
            right.errorbar(
                [p.mean], [i], xerr=[[p.mean - p.low], [p.high - p.mean]], fmt="o",
                color=colours.get(verdict, "tab:gray"), capsize=4, zorder=3,
            )  # fmt: skip
    right.axvline(0, color="black", lw=0.8)
    right.set_yticks(range(len(results)), [f"{c.name} (n={p.n})" for c, p, _ in results])
    right.invert_yaxis()
    right.set_xlabel("paired difference (points); dots: seeds; mean ± 95 % t-interval")
    right.set_title("95 % interval; colour: the verdict (green reproduced, red contradicted)", fontsize=9)
    right.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    try:
        save_atomically(lambda tmp: fig.savefig(tmp, dpi=110, format="png"), path)
    finally:
        plt.close(fig)


def save_atomically(write: Any, path: Path) -> None:
    """`write(temp_path)`, then rename over `path`: a full disk leaves the previous file, not a cut one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and (exc.filename in (None, tmp) or exc.filename2 == tmp):
            # a failed write() names no file, a failed copy its source; the temp name means nothing
            exc.filename, exc.filename2 = str(path), None
        raise


def write(out: Path, results: Path, figure_path: Path) -> None:
    rows = read_rows(out / "runs.csv")
    if not rows:
        raise SystemExit(f"no finished runs in {out / 'runs.csv'}")
    meta_file = out / "meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    teacher = meta.get("teachers", {}).get("main", {}).get("top1_last")
    figure(rows, figure_path, teacher, load_looks(out, meta), theta_gate(out))
    try:
        rel = figure_path.resolve().relative_to(results.resolve().parent)
    except ValueError:
        rel = figure_path.resolve()
    command = f"python benchmarks/evidence/report.py --results {_shown(out)}"
    if results.resolve() != (out / "RESULTS.md").resolve():
        command += f" --write {_shown(results)}"
    if figure_path.resolve() != results.resolve().with_name("evidence.png"):
        command += f" --figure {_shown(figure_path)}"
    atomic_write_text(markdown(rows, meta, str(rel), out, command), results)


def read_diffs(path: Path) -> dict[str, dict[int, float]]:
    """claims_diffs.csv (claim key, seed, diff; lines starting with # are notes) → key → seed → diff."""
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    diffs: dict[str, dict[int, float]] = {}
    for row in csv.DictReader(lines):
        diffs.setdefault(row["claim"], {})[int(row["seed"])] = float(row["diff"])
    return diffs


def write_verdicts(folder: Path, path: Path) -> None:
    """VERDICTS.md of a folder that kept only the claims' per-seed differences (its raw rows were lost)."""
    source = folder / "claims_diffs.csv"
    notes = [line[1:].strip() for line in source.read_text().splitlines() if line.startswith("#")]
    judged = judged_from_diffs(read_diffs(source), load_looks(folder), theta_gate(folder))
    lines = [
        "# Verdicts restated under the design's boundary",
        "",
        f"Written by `python benchmarks/evidence/report.py --results {folder.as_posix()}` from "
        "claims_diffs.csv and looks.json. " + " ".join(notes),
        "",
        *claims_table([], judged=judged),
        "",
    ]
    atomic_write_text("\n".join(lines), path)


def verdict_lines(judged: list[tuple[A.Claim, Judged]]) -> str:
    """One line per claim, the words of RESULTS.md: for README.md and docs/results.md."""
    return "\n".join(
        f"- {c.name}: {j.paired.mean:+.2f} {_interval(j.paired)} ({j.paired.n} seeds): {j.words}"
        for c, j in judged
    )


REWRITE_HINT = "free space or choose another --write/--figure, then rerun the same command"


def main(argv: list[str] | None = None) -> int:
    """The command line; a full or read-only disk is one line and exit 74 (the old files stay)."""
    try:
        return _main(argv)
    except Exception as exc:
        fault = storage_fault(exc, REWRITE_HINT)
        if fault is None:
            raise
        print(f"report.py: error: {fault}", file=sys.stderr)
        return STORAGE_EXIT_CODE


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--results", required=True, help="a results folder (runs.csv + meta.json, or claims_diffs.csv)"
    )
    parser.add_argument("--write", help="the Markdown to write (default DIR/RESULTS.md, or DIR/VERDICTS.md)")
    parser.add_argument("--figure", help="the PNG written with RESULTS.md (default next to it, evidence.png)")
    args = parser.parse_args(argv)
    folder = Path(args.results)
    if not (folder / "runs.csv").is_file():
        if not (folder / "claims_diffs.csv").is_file():
            raise SystemExit(f"{folder} holds neither runs.csv nor claims_diffs.csv")
        target = Path(args.write or folder / "VERDICTS.md")
        write_verdicts(folder, target)
        print(target.read_text())
        return 0
    target = Path(args.write or folder / "RESULTS.md")
    write(folder, target, Path(args.figure or target.with_name("evidence.png")))
    print(
        verdict_lines(judged_claims(read_rows(folder / "runs.csv"), load_looks(folder), theta_gate(folder)))
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
