"""Evidence on the scenes test bed: does it separate a teacher from a student, and do the detection and
segmentation baselines beat the plain student at paired seeds?

The test bed (`datakd data scenes`: 96-px canvases of Fashion-MNIST objects, COCO and Cityscapes layouts) is
generated into OUT/bed. A detection teacher and a segmentation teacher are trained once (seed 0); then
every student arm runs the protocol's seeds, fixed here before any run (`SEEDS`): a seed fixes the
student's initialisation and data order, so two arms' runs with one seed are paired. Arms are the
shipped test-bed recipes (recipes/testbed) with the protocol's epochs. Claims (`CLAIMS`) get the paired
difference of the last-epoch metric (COCO mAP, mIoU), its 95 % t-interval and the verdict of
benchmarks/evidence/stats.judge, the one verdict function.

    python benchmarks/evidence/dense.py --fmnist ../shared/data/fashion-mnist --out runs/dense-evidence
    python benchmarks/evidence/dense.py --out OUT --report-only          # runs.csv + RESULTS.md from OUT
    python benchmarks/evidence/dense.py --fmnist DIR --out OUT --smoke   # the pipeline in about a minute

Reruns skip finished runs and resume killed ones (`--resume auto`). Two runs at a time on this 2-core CPU
(one thread each); `--jobs N --device cuda` on a GPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import run_logged, write_yaml  # noqa: E402
from benchmarks.evidence.report import THETA_MOVED, policy_movement  # noqa: E402
from benchmarks.evidence.stats import judge, paired  # noqa: E402
from datakd.sweep import run_finished  # noqa: E402

RECIPES = ROOT / "recipes" / "testbed"


@dataclass(frozen=True)
class Protocol:
    """Sizes fixed before any run; `cpu` is the background protocol of this 2-core machine."""

    train: int
    val: int
    teacher_epochs: int
    student_epochs: int
    seeds: int
    arms: tuple[str, ...] = ()  # the protocol's arms (empty: all)
    # TST Stage I: at most this many iterations per op (the recipe's 10 epochs over 2,000 canvases take
    # about 20 minutes per task on this CPU; None: the recipe's fit)
    tst_fit_iters: int | None = None


# role -> (task, teacher recipe, metric column of summary.json, recipe changes)
TEACHERS: dict[str, tuple[str, str, str, dict[str, Any]]] = {
    "detection": ("detection", "retinanet_teacher.yaml", "map", {}),
    # the same teacher at twice the width (4× the student's): DPK's "better teacher, better student"
    "detection_large": (
        "detection",
        "retinanet_teacher.yaml",
        "map",
        {"student": {"kwargs": {"width": 0.5}}},
    ),
    "detection_frcnn": ("detection", "fasterrcnn_teacher.yaml", "map", {}),
    "segmentation": ("segmentation", "pspnet_teacher.yaml", "miou", {}),
}
LARGE_TEACHER = {"teacher": {"kwargs": {"width": 0.5}}}
# arm -> (teacher role, recipe[, recipe changes])
ARMS: dict[str, tuple[Any, ...]] = {
    "det_student": ("detection", "retinanet_student.yaml"),
    "det_kd": ("detection", "retinanet_kd.yaml"),
    "det_mimic": ("detection", "retinanet_mimic.yaml"),
    "det_fgd": ("detection", "retinanet_fgd.yaml"),
    "seg_student": ("segmentation", "pspnet_student.yaml"),
    "seg_kd": ("segmentation", "pspnet_seg_kd.yaml"),
    # seed papers on the test bed (issue 28): TST (000 Tables 3-4) and DPK inside FGD (004 Table 4)
    "det_kd_mimic": ("detection", "retinanet_kd_mimic.yaml"),
    "det_tst_kd": ("detection", "tst_retinanet_kd.yaml"),
    "det_tst_kd_mimic": ("detection", "tst_retinanet_kd_mimic.yaml"),
    "det_fgd_dpk": ("detection", "retinanet_fgd_dpk.yaml"),
    "seg_tst": ("segmentation", "tst_pspnet_seg_kd.yaml"),
    # GPU protocol only (CPU time): a larger teacher, and a two-stage pair
    "det_fgd_large": ("detection_large", "retinanet_fgd.yaml", LARGE_TEACHER),
    "det_fgd_dpk_large": ("detection_large", "retinanet_fgd_dpk.yaml", LARGE_TEACHER),
    "frcnn_student": ("detection_frcnn", "fasterrcnn_student.yaml"),
    "frcnn_kd": ("detection_frcnn", "fasterrcnn_kd.yaml"),
    "frcnn_tst_kd": ("detection_frcnn", "tst_fasterrcnn_kd.yaml"),
}
CPU_ARMS = (
    "det_student", "det_kd", "det_mimic", "det_fgd", "seg_student", "seg_kd",
    "det_kd_mimic", "det_tst_kd", "det_tst_kd_mimic", "det_fgd_dpk", "seg_tst",
)  # fmt: skip
PROTOCOLS = {
    "cpu": Protocol(
        train=2000, val=500, teacher_epochs=36, student_epochs=12, seeds=3, arms=CPU_ARMS, tst_fit_iters=160
    ),
    "gpu": Protocol(train=2000, val=500, teacher_epochs=36, student_epochs=12, seeds=5),
    "smoke": Protocol(
        train=24,
        val=8,
        teacher_epochs=1,
        student_epochs=1,
        seeds=2,
        arms=("det_student", "det_fgd", "seg_student", "seg_tst"),
    ),
}
# arms run first, all seeds (the test bed as an instrument and the baselines), then the seed papers' arms
BASELINE_ARMS = ("det_student", "det_kd", "det_mimic", "det_fgd", "seg_student", "seg_kd")
# (better, worse, claim text): the baselines' claims of their papers, on the test bed
CLAIMS = (
    ("det_kd", "det_student", "det_kd > plain student (RetinaNet, mAP)"),
    ("det_mimic", "det_student", "mimic > plain student (RetinaNet, mAP)"),
    ("det_fgd", "det_student", "FGD > plain student (RetinaNet, mAP)"),
    ("seg_kd", "seg_student", "seg_kd > plain student (PSPNet, mIoU)"),
    ("det_tst_kd", "det_kd", "TST (KD) > KD (000 Table 3; RetinaNet, mAP)"),
    ("det_tst_kd_mimic", "det_kd_mimic", "TST (KD+mimic) > KD+mimic (000 Table 3; RetinaNet, mAP)"),
    ("det_fgd_dpk", "det_fgd", "FGD+DPK ≥ FGD (004 Table 4; RetinaNet, mAP)"),
    ("seg_tst", "seg_kd", "TST > KD (000 Table 4; PSPNet, mIoU)"),
    ("frcnn_tst_kd", "frcnn_kd", "TST (KD) > KD (000 Table 3; Faster R-CNN, mAP)"),
    ("frcnn_kd", "frcnn_student", "det_kd > plain student (Faster R-CNN, mAP)"),
    ("det_fgd_dpk_large", "det_fgd_dpk", "a larger teacher gives a better FGD+DPK student (004 §3.2)"),
)
# (arm pairs whose gains are compared, text): DPK's gain over FGD grows as the teacher-student gap grows
GAIN_CLAIMS = (
    (("det_fgd_dpk_large", "det_fgd_large"), ("det_fgd_dpk", "det_fgd"),
     "DPK's gain over FGD is larger from the larger teacher (004 Table 4)"),
)  # fmt: skip
AT_LEAST = {"det_fgd_dpk"}  # claims of the form "≥": an unresolved difference is what they predict
COLUMNS = (
    "arm",
    "seed",
    "task",
    "metric_last",
    "metric_best",
    "ap50_last",
    "epochs",
    "wall_seconds",
    "run_dir",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fmnist", default=str(ROOT.parent / "shared" / "data" / "fashion-mnist"))
    parser.add_argument("--out", required=True)
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="cpu")
    parser.add_argument("--smoke", action="store_true", help="the smoke protocol (same as --protocol smoke)")
    parser.add_argument("--arms", default="", help="comma-separated subset of " + ",".join(ARMS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--report-only", action="store_true")
    return parser.parse_args(argv)


def recipe_for(
    recipe: str, out: Path, epochs: int, seed: int, device: str, extra: dict[str, Any], scale: bool = True
) -> Path:
    """The shipped test-bed recipe with the protocol's epochs, seed and paths.

    Students follow the epoch-scaling rule (`schedule.scale` = protocol epochs ÷ recipe epochs: LR steps,
    and TST's Stage II epochs, move with the run's length); the teacher keeps the recipe's LR steps and
    trains on at the last rate (`scale=False`: a longer low-LR tail, what it needs to converge from scratch).
    """
    values = yaml.safe_load((RECIPES / recipe).read_text())
    if scale:
        values.setdefault("schedule", {})["scale"] = epochs / values["epochs"]
    else:
        values["epochs"] = epochs
    values["seed"] = seed
    values["device"] = device
    values["quiet"] = True
    values.setdefault("engine", {})["tensorboard"] = False
    for key, value in extra.items():
        values[key] = {**values[key], **value} if isinstance(value, dict) and key in values else value
    return write_yaml(values, out / "recipe.yaml")


TST_ARMS = {arm for arm, spec in ARMS.items() if spec[1].startswith("tst_")}


def tst_augmenter(recipe: str, encoders: Path, proto: Protocol) -> dict[str, Any]:
    """The TST recipe's augmenter with the protocol's encoders file and Stage I budget (the same in the
    fit and in every run, so the runs accept the file)."""
    augmenter = dict(yaml.safe_load((RECIPES / recipe).read_text())["augmenter"])
    augmenter["encoders"] = str(encoders)
    if proto.tst_fit_iters is not None:
        augmenter["fit"] = {**augmenter.get("fit", {}), "max_iters": proto.tst_fit_iters}
    return augmenter


def fit_tst(task: str, out: Path, bed: Path, proto: Protocol, device: str) -> Path:
    """TST's Stage I encoders for the task's test bed (once; a matching file is re-used)."""
    recipe = next(spec[1] for a, spec in ARMS.items() if a in TST_ARMS and TEACHERS[spec[0]][0] == task)
    encoders = out / "tst_encoders" / f"{task}.pt"
    changes = {"augmenter": tst_augmenter(recipe, encoders, proto)}
    path = recipe_for(recipe, out / "recipes" / f"tst-fit-{task}", proto.student_epochs, 0, device, changes)
    cmd = [sys.executable, "-m", "datakd", "tst", "fit", "--config", str(path), "--data-root", str(bed)]
    code = run_logged([*cmd, "--quiet"], out / "tst_encoders" / f"{task}.log", 2)
    if code != 0:
        raise SystemExit(
            f"TST Stage I fit for {task} failed with exit {code}; see {out}/tst_encoders/{task}.log"
        )
    return encoders


def train(cmd_mode: str, recipe: Path, run_dir: Path, bed: Path, threads: int, extra: list[str]) -> int:
    cmd = [sys.executable, "-m", "datakd", cmd_mode, "--config", str(recipe), "--data-root", str(bed)]
    cmd += ["--out", str(run_dir), "--resume", "auto", *extra]
    return run_logged(cmd, run_dir.parent / f"{run_dir.name}.log", threads)


def summary_row(arm: str, seed: int, task: str, metric: str, run_dir: Path) -> dict[str, Any]:
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "arm": arm,
        "seed": seed,
        "task": task,
        "metric_last": summary[f"{metric}_last"],
        "metric_best": summary[f"{metric}_best"],
        "ap50_last": summary.get("ap50_last"),
        "epochs": summary["epochs"],
        "wall_seconds": round(summary["wall_seconds"], 1),
        "run_dir": str(run_dir),
    }


def run(args: argparse.Namespace) -> Path:
    proto = PROTOCOLS["smoke" if args.smoke else args.protocol]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bed = out / "bed"
    if not (bed / "MANIFEST.sha256").is_file():
        from datakd.data.dense.scenes import generate_scenes

        generate_scenes(args.fmnist, bed, train=proto.train, val=proto.val, overwrite=bed.exists())
    threads = 1 if args.device == "cpu" else 2
    arms = [a for a in args.arms.split(",") if a] or list(proto.arms or ARMS)
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise SystemExit(f"unknown arms {unknown}; valid: {', '.join(ARMS)}")
    roles = {ARMS[a][0] for a in arms}
    teachers: dict[str, Path] = {}
    started = time.time()

    def train_teacher(role: str) -> tuple[str, Path]:
        _, recipe, _, changes = TEACHERS[role]
        run_dir = out / "teachers" / role
        if not run_finished(run_dir):
            recipe_dir = out / "recipes" / f"teacher-{role}"
            path = recipe_for(recipe, recipe_dir, proto.teacher_epochs, 0, args.device, changes, scale=False)
            code = train("train", path, run_dir, bed, threads, [])
            if code != 0:
                raise SystemExit(f"teacher {role} failed with exit {code}; see {run_dir}.log")
        return role, run_dir / "last.pt"

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        teachers.update(pool.map(train_teacher, sorted(roles)))
    first = [a for a in arms if a in BASELINE_ARMS]
    later = [a for a in arms if a not in first]
    jobs = [(arm, seed) for group in (first, later) for seed in range(proto.seeds) for arm in group]
    encoders: dict[str, Path] = {}
    fitting = threading.Lock()

    def encoders_for(task: str) -> Path:
        """Stage I once per task, when its first TST run starts (the baselines run meanwhile)."""
        with fitting:
            if task not in encoders:
                encoders[task] = fit_tst(task, out, bed, proto, args.device)
        return encoders[task]

    def train_student(job: tuple[str, int]) -> tuple[str, int, int]:
        arm, seed = job
        role, recipe, *changes = ARMS[arm]
        task = TEACHERS[role][0]
        run_dir = out / "runs" / f"{arm}-seed{seed}"
        if run_finished(run_dir):
            return arm, seed, 0
        extra_values = dict(changes[0]) if changes else {}
        if arm in TST_ARMS:
            extra_values["augmenter"] = tst_augmenter(recipe, encoders_for(task), proto)
        path = recipe_for(
            recipe,
            out / "recipes" / f"{arm}-seed{seed}",
            proto.student_epochs,
            seed,
            args.device,
            extra_values,
        )
        mode = "train" if arm.endswith("student") else "distill"
        extra = [] if mode == "train" else ["--teacher-checkpoint", str(teachers[role])]
        return arm, seed, train(mode, path, run_dir, bed, threads, extra)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for arm, seed, code in pool.map(train_student, jobs):
            print(f"{arm} seed {seed}: {'ok' if code == 0 else f'exit {code}'}", flush=True)
    collect(out)
    meta = {
        "protocol": args.protocol if not args.smoke else "smoke",
        "sizes": proto.__dict__,
        "device": args.device,
        "jobs": args.jobs,
        "wall_seconds_this_invocation": round(time.time() - started, 1),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def collect(out: Path) -> list[dict[str, Any]]:
    """OUT/runs.csv from every finished run under OUT/runs and OUT/teachers (the run directories are the
    record; a run still training or killed is left out), so a report can be written while runs go on."""
    rows = []
    for run_dir in sorted(p for p in (out / "runs").glob("*-seed*") if p.is_dir()):
        arm, _, seed = run_dir.name.rpartition("-seed")
        if arm in ARMS and run_finished(run_dir):
            task, _, metric, _ = TEACHERS[ARMS[arm][0]]
            rows.append(summary_row(arm, int(seed), task, metric, run_dir))
            keep_raw(run_dir, out / "raw" / run_dir.name)
    for role, (task, _, metric, _) in TEACHERS.items():
        if run_finished(out / "teachers" / role):
            rows.append(summary_row(f"teacher_{role}", 0, task, metric, out / "teachers" / role))
            keep_raw(out / "teachers" / role, out / "raw" / f"teacher_{role}")
    with open(out / "runs.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return rows


RAW_FILES = ("summary.json", "config.yaml", "metrics.csv", "tst_policy.csv")


def keep_raw(run_dir: Path, raw: Path) -> None:
    """A finished run's record in OUT/raw/RUN (summary, resolved config, per-epoch metrics and TST's θ
    trajectory, the CSVs gzipped): small enough to commit, so the report and any later question about a
    run's curve can be answered from the results folder without the checkpoints."""
    import gzip
    import shutil

    raw.mkdir(parents=True, exist_ok=True)
    for name in RAW_FILES:
        source = run_dir / name
        if not source.is_file():
            continue
        if name.endswith(".csv"):
            # mtime 0: the same run gives the same bytes, so a re-collect leaves the committed files unchanged
            with (
                open(source, "rb") as src,
                open(raw / f"{name}.gz", "wb") as file,
                gzip.GzipFile(fileobj=file, mode="wb", mtime=0) as dst,
            ):
                shutil.copyfileobj(src, dst)
        else:
            shutil.copyfile(source, raw / name)


def theta_moves(out: Path) -> dict[str, dict[int, float]]:
    """Per TST arm and seed: the largest change of any op's p_apply or m over the run (`policy_movement`),
    read from OUT/raw (a results folder)."""
    import gzip

    moves: dict[str, dict[int, float]] = {}
    for path in sorted((out / "raw").glob("*-seed*/tst_policy.csv.gz")):
        arm, _, seed = path.parent.name.rpartition("-seed")
        with gzip.open(path, "rt") as handle:
            moves.setdefault(arm, {})[int(seed)] = policy_movement(handle.read())
    return moves


def read_rows(out: Path) -> list[dict[str, Any]]:
    with open(out / "runs.csv") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["seed"] = int(row["seed"])
        for key in ("metric_last", "metric_best", "ap50_last"):
            row[key] = float(row[key]) if row[key] not in ("", "None") else None
    return rows


def report(out: Path) -> str:
    """RESULTS.md: the teacher-student gap and every claim's verdict, from OUT/runs.csv alone."""
    rows = read_rows(out)
    meta = json.loads((out / "meta.json").read_text()) if (out / "meta.json").is_file() else {}
    design = meta.get("sizes", {}).get("seeds")
    by_arm: dict[str, dict[int, float]] = {}
    for row in rows:
        if row["metric_last"] is not None:
            by_arm.setdefault(row["arm"], {})[row["seed"]] = row["metric_last"]
    lines = [
        "# Scenes test bed: detection and segmentation evidence",
        "",
        f"Protocol `{meta.get('protocol', '?')}`: {meta.get('sizes', {})}; last-epoch metric "
        "(COCO mAP × 100 with area ranges × 0.25, mIoU %) on the test bed's validation split; written by "
        "`python benchmarks/evidence/dense.py --out OUT --report-only`.",
        "",
        "## Arms (mean ± std over seeds, last epoch)",
        "",
        "| arm | seeds | last | best |",
        "|---|---|---|---|",
    ]
    for arm in sorted(by_arm):
        values = list(by_arm[arm].values())
        best = [r["metric_best"] for r in rows if r["arm"] == arm and r["metric_best"] is not None]
        lines.append(f"| {arm} | {len(values)} | {_mean_std(values)} | {_mean_std(best)} |")
    lines += ["", "## Teacher − student gap (teacher: one run, seed 0)", ""]
    students = {"detection_frcnn": "frcnn_student", "segmentation": "seg_student"}
    for role in TEACHERS:
        student = students.get(role, "det_student")
        teacher = by_arm.get(f"teacher_{role}", {}).get(0)
        values = list(by_arm.get(student, {}).values())
        if teacher is None or not values:
            continue
        gap = teacher - sum(values) / len(values)
        lines.append(f"- {role}: teacher {teacher:.2f}, plain student {_mean_std(values)}: gap {gap:+.2f}")
    lines += ["", "## Claims (paired by seed, seeds fixed before the runs)", ""]
    lines += ["| claim | seeds | mean difference | 95 % interval | verdict |", "|---|---|---|---|---|"]
    for better, worse, text in CLAIMS:
        if better not in by_arm or worse not in by_arm:
            continue
        judged = judge(paired(by_arm[better], by_arm[worse]), at_least=better in AT_LEAST)
        interval = "–" if judged.low is None else f"[{judged.low:+.2f}, {judged.high:+.2f}]"
        words = judged.words + _short(judged.paired.n, design)
        lines.append(f"| {text} | {judged.paired.n} | {judged.paired.mean:+.2f} | {interval} | {words} |")
    for (a, b), (c, d), text_ in GAIN_CLAIMS:
        if not all(arm in by_arm for arm in (a, b, c, d)):
            continue
        seeds = set(by_arm[a]) & set(by_arm[b]) & set(by_arm[c]) & set(by_arm[d])
        gains = {s: (by_arm[a][s] - by_arm[b][s]) - (by_arm[c][s] - by_arm[d][s]) for s in seeds}
        judged = judge(paired(gains, dict.fromkeys(seeds, 0.0)))
        interval = "–" if judged.low is None else f"[{judged.low:+.2f}, {judged.high:+.2f}]"
        words = judged.words + _short(judged.paired.n, design)
        lines.append(f"| {text_} | {judged.paired.n} | {judged.paired.mean:+.2f} | {interval} | {words} |")
    moves = theta_moves(out)
    if moves:
        lines += ["", "## TST's θ: did the search move it?", ""]
        lines += [
            f"Largest change of any op's p_apply or m over each run (`tst_policy.csv`); the classification "
            f"protocol's gate calls θ moved at ≥ {THETA_MOVED}. Where it did not move, the TST arm tested "
            "the initial random policy (p_apply ≈ 0.62, m = 0.5 for every op) rather than a searched one.",
            "",
            "| arm | per seed | median | moved |",
            "|---|---|---|---|",
        ]
        for arm, per_seed in sorted(moves.items()):
            values = [per_seed[s] for s in sorted(per_seed)]
            median = statistics.median(values)
            shown = ", ".join(f"{v:.3f}" for v in values)
            lines.append(f"| {arm} | {shown} | {median:.3f} | {'yes' if median >= THETA_MOVED else 'no'} |")
    text = "\n".join(lines) + "\n"
    (out / "RESULTS.md").write_text(text)
    return text


def _short(seeds: int, design: int | None) -> str:
    """Said of a claim whose runs stopped before the design's seeds: its verdict is not the design's."""
    if design is None or seeds >= design:
        return ""
    return f" (only {seeds} of the design's {design} seeds finished: not the design's verdict)"


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    mean = sum(values) / len(values)
    if len(values) < 2:
        return f"{mean:.2f}"
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{mean:.2f} ± {std:.2f}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    if not args.report_only:
        run(args)
    elif (out / "runs").is_dir():
        collect(out)
    print(report(out))


if __name__ == "__main__":
    main()
