"""OUT/runs.csv in, RESULTS.md and the figure out: the arm table, the claims with their verdicts.

Everything here reads only OUT/runs.csv and OUT/meta.json, so results brought back from another machine
(without its checkpoints) are aggregated here with ``run.py --out OUT --aggregate-only``.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Any

from benchmarks.evidence import arms as A
from benchmarks.evidence.stats import Paired, paired
from datakd.checkpoint import atomic_write_text

FIELDS = (
    "arm", "seed", "top1_last", "top1_best", "train_top1", "wall_s", "images_per_sec", "git_revision",
    "epochs", "train_size", "test_images", "device",
)  # fmt: skip


def write_json(values: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(values, indent=1, default=str) + "\n", path)


def device_name(device: str) -> str:
    if not device.startswith("cuda"):
        return "no GPU used"
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CUDA not available"


def append_row(path: Path, row: dict[str, Any]) -> None:
    """One finished run; the file is flushed at once so a benchmark cut by a timeout keeps its rows."""
    new = not path.is_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in FIELDS})
        handle.flush()


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


def _interval(p: Paired) -> str:
    return "–" if p.low is None else f"[{p.low:+.2f}, {p.high:+.2f}]"


def claims_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| claim | paper | seeds | per-seed difference | mean difference | 95 % t-interval | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for claim, p in claim_results(rows):
        diffs = ", ".join(f"{d:+.2f}" for d in p.diffs)
        lines.append(
            f"| {claim.name} (`{claim.better}` − `{claim.worse}`) | {claim.paper} | {p.n} | {diffs} | "
            f"{p.mean:+.2f} | {_interval(p)} | **{p.verdict}** |"
        )
    ran = scores(rows)
    for claim in A.CLAIMS:
        missing = [a for a in (claim.better, claim.worse) if a not in ran]
        if missing:
            lines.append(
                f"| {claim.name} (`{claim.better}` − `{claim.worse}`) | {claim.paper} | 0 | – | – | – | "
                f"**not run** (no runs of {', '.join(missing)}) |"
            )
    return lines


def claims_text(rows: list[dict[str, Any]]) -> str:
    return "\n".join(
        f"{c.name:<36} n={p.n}  {p.mean:+6.2f}  {_interval(p):<18} {p.verdict}"
        for c, p in claim_results(rows)
    )


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


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any], figure: str) -> str:
    proto = meta.get("protocol", {})
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
        "Written by `python benchmarks/evidence/run.py --out OUT --aggregate-only` from OUT/runs.csv of:",
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
        "below 0; **inconclusive**: it contains 0 (no difference resolved at this many seeds). For a "
        "'≥' claim, inconclusive means no difference was resolved, which is what '≥' predicts but does "
        "not prove.",
        "",
        *claims_table(rows),
        "",
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


def figure(rows: list[dict[str, Any]], path: Path, teacher_top1: float | None = None) -> None:
    """Left: per-seed dots and the mean per arm. Right: paired difference per claim with its 95 % interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top1 = scores(rows)
    arms = [a for a in A.ARMS if a in top1]
    results = claim_results(rows)
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
    for i, (_, p) in enumerate(results):
        right.scatter(p.diffs, [i] * p.n, s=10, color="tab:blue", alpha=0.5, zorder=2)
        if p.low is not None:
            right.errorbar(
                [p.mean], [i], xerr=[[p.mean - p.low], [p.high - p.mean]], fmt="o",
                color=colours[p.verdict], capsize=4, zorder=3,
            )  # fmt: skip
    right.axvline(0, color="black", lw=0.8)
    right.set_yticks(range(len(results)), [f"{c.name} (n={p.n})" for c, p in results])
    right.invert_yaxis()
    right.set_xlabel("paired difference (points); dots: seeds; mean ± 95 % t-interval")
    right.set_title("green: reproduced, red: contradicted, grey: inconclusive", fontsize=9)
    right.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(out: Path, results: Path, figure_path: Path) -> None:
    rows = read_rows(out / "runs.csv")
    if not rows:
        raise SystemExit(f"no finished runs in {out / 'runs.csv'}")
    meta_file = out / "meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    teacher = meta.get("teachers", {}).get("main", {}).get("top1_last")
    figure(rows, figure_path, teacher)
    try:
        rel = figure_path.resolve().relative_to(results.resolve().parent)
    except ValueError:
        rel = figure_path.resolve()
    atomic_write_text(markdown(rows, meta, str(rel)), results)
