"""Smoke benchmark: every baseline distillation loss trains a student on real Fashion-MNIST images.

Unit tests check each loss on tensors; this checks the whole path a user takes (config -> trainer ->
feature taps -> loss term -> optimiser -> metrics.csv) for every baseline at once, on real data, in a few
minutes on a laptop CPU. A ResNet-20 teacher is trained once with CE (cached in the output directory, so a
rerun only distils); then each loss distils a ResNet-8 student with the same data, schedule and seed. Per
loss it reports the method's own term at the first and last epoch, the total loss, top-1, and a verdict:
"ok" when the term went down and the student is far above chance (10 classes: 10 %).

Weights and options come from recipes/cifar100/baselines/*_resnet56_resnet20.yaml (the same CIFAR ResNet
family as this teacher/student pair; WSL from recipes/imagenet/effdstl). Changes for a 4-epoch run are
listed in the "setting" column, and the reason is in METHODS below.

    python benchmarks/losses_smoke.py --data-root /work/shared/data/fashion-mnist --out /tmp/losses_smoke

Hand-run, not a test: it takes minutes and its numbers are for reading, not asserting.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_ROOT = "/work/shared/data/fashion-mnist"
TEACHER = "resnet20"
STUDENT = "resnet8"
# A student is judged to have learned when top-1 clears chance (10 %) by this much.
TOP1_OK = 30.0


@dataclass(frozen=True)
class Method:
    """One row of the table: the loss terms of the run (besides CE) and what we changed from the recipe."""

    label: str
    term: str  # the loss term whose own value we follow (its metrics.csv column is loss_<term>)
    loss: dict[str, dict[str, Any]]
    ce_weight: float = 1.0
    change: str = ""  # departure from the recipe, shown in the table

    def loss_config(self) -> dict[str, dict[str, Any]]:
        if self.term == "ce":
            return {"ce": {"weight": self.ce_weight}}
        return {"ce": {"weight": self.ce_weight}, **self.loss}

    def setting(self) -> str:
        """Weight, CE weight when not 1, and the options the config sets (feature taps left out)."""
        if self.term == "ce":
            return "ce 1"
        opts = dict(self.loss[self.term])
        text = f"w={opts.pop('weight'):g}"
        if self.ce_weight != 1.0:
            text += f", ce {self.ce_weight:g}"
        shown = {k: v for k, v in opts.items() if k not in ("teacher", "student")}
        text += "".join(f", {k}={v}" for k, v in shown.items())
        return text + (f" ({self.change})" if self.change else "")


# The two warm-ups (DKD, ReviewKD: 20 of 240 epochs) are switched off: over 4 epochs a 20-epoch ramp keeps
# the logged term at 5-20 % of its weight and makes it grow by construction, which hides whether the
# method itself is being minimised. The CRD queue holds ~one epoch of this 4,000-image slice (the default
# 16,384 would still hold its random initial entries at the end of the run).
METHODS: tuple[Method, ...] = (
    Method("ce", "ce", {}),
    Method("kd", "kd", {"kd": {"weight": 0.9, "temperature": 4.0}}, ce_weight=0.1),
    Method(
        "dkd",
        "dkd",
        {"dkd": {"weight": 1.0, "alpha": 1.0, "beta": 2.0, "temperature": 4.0, "warmup_epochs": 0.0}},
        change="recipe warm-up 20 ep",
    ),
    Method("dist", "dist", {"dist": {"weight": 2.0, "beta": 1.0, "gamma": 1.0, "temperature": 4.0}}),
    Method("wsl", "wsl", {"wsl": {"weight": 2.5, "temperature": 2.0, "variant": "official"}}),
    Method("fitnet", "fitnet", {"fitnet": {"weight": 100.0}}),
    Method("at", "at", {"at": {"weight": 1000.0}}),
    Method("sp", "sp", {"sp": {"weight": 3000.0}}),
    Method("cc", "cc", {"cc": {"weight": 0.02, "form": "repdistiller"}}),
    Method("rkd", "rkd", {"rkd": {"weight": 1.0}}),
    Method("pkt", "pkt", {"pkt": {"weight": 30000.0}}),
    Method("vid", "vid", {"vid": {"weight": 1.0}}),
    Method("crd", "crd", {"crd": {"weight": 0.8}}),
    Method(
        "crd-queue",
        "crd",
        {"crd": {"weight": 0.8, "memory": "queue", "queue_size": 4096}},
        change="default queue 16384",
    ),
    Method(
        "reviewkd",
        "reviewkd",
        {
            "reviewkd": {
                "weight": 0.6,
                "warmup_epochs": 0.0,
                # Pre-activation output of each stage's last block, as the recipes tap ResNet teachers.
                "teacher": ["layer1.2.act:input", "layer2.2.act:input", "layer3.2.act:input", "pre_logits"],
            }
        },
        change="recipe warm-up 20 ep",
    ),
)


@dataclass
class Setup:
    """What every run shares: data slice, schedule, seed."""

    data_root: str
    out: Path
    epochs: int = 4
    train_subset: int = 4000
    test_subset: int = 2000
    batch_size: int = 128
    teacher_epochs: int = 6
    lr: float = 0.05
    seed: int = 0

    def config(self, name: str, out: Path, model: str, epochs: int, **changes: Any) -> Any:
        from datakd.config import config_from_dict

        values: dict[str, Any] = {
            "name": name,
            "seed": self.seed,
            "device": "cpu",
            "out": str(out),
            "epochs": epochs,
            "quiet": True,
            "data": {
                "dataset": "fashion-mnist",
                "root": self.data_root,
                "train_subset": self.train_subset,
                "test_subset": self.test_subset,
                "batch_size": self.batch_size,
                "eval_batch_size": 500,
                "augment": "crop_flip",
                "crop_padding": 2,
                # 28×28 grayscale as stored: a third of the pixels of the padded RGB default.
                "options": {"pad_to_32": False, "rgb": False},
            },
            "student": {"name": model, "kwargs": {"in_channels": 1}},
            "optim": {"name": "sgd", "lr": self.lr, "momentum": 0.9, "weight_decay": 5e-4},
            # One tenth of the rate for the last quarter, as the CIFAR recipes' decays do at their end.
            "schedule": {"name": "multistep", "milestones": [max(1, round(0.75 * epochs))], "gamma": 0.1},
            "engine": {"tensorboard": False},
            **changes,
        }
        return config_from_dict(values)


def train_teacher(setup: Setup) -> tuple[Path, float, float]:
    """The CE teacher's checkpoint (trained here unless a finished one for these settings exists)."""
    from datakd.engine.build import build_trainer

    key = (
        f"{TEACHER}-e{setup.teacher_epochs}-n{setup.train_subset}-t{setup.test_subset}"
        f"-b{setup.batch_size}-s{setup.seed}"
    )
    run = setup.out / "teacher" / key
    summary_file = run / "smoke_summary.json"
    if summary_file.exists() and (run / "last.pt").exists():
        cached = json.loads(summary_file.read_text())
        print(f"teacher: reusing {run} (top-1 {cached['top1_last']:.2f} %)", flush=True)
        return run / "last.pt", cached["top1_last"], 0.0
    shutil.rmtree(run, ignore_errors=True)
    start = time.perf_counter()
    cfg = setup.config("smoke-teacher", run, TEACHER, setup.teacher_epochs, optim={"name": "sgd", "lr": 0.1})
    summary = build_trainer(cfg, "train").fit()
    seconds = time.perf_counter() - start
    summary_file.write_text(json.dumps({"top1_last": summary["top1_last"], "seconds": seconds}))
    print(f"teacher: {TEACHER} trained in {seconds:.0f} s, top-1 {summary['top1_last']:.2f} %", flush=True)
    return run / "last.pt", summary["top1_last"], seconds


def read_metrics(path: Path) -> list[dict[str, float]]:
    from datakd.engine.metrics import read_metrics as read

    return read(path)


def verdict(term_first: float | None, term_last: float | None, top1_last: float | None) -> str:
    problems = []
    if term_first is None or term_last is None or not term_last < term_first:
        problems.append("own term did not decrease")
    if top1_last is None or not top1_last > TOP1_OK:
        problems.append(f"top-1 <= {TOP1_OK:g} %")
    return "ok" if not problems else "; ".join(problems)


def distil(setup: Setup, method: Method, teacher: Path) -> dict[str, Any]:
    """Run one loss from scratch and summarise its metrics.csv; a crash becomes a row, not an abort."""
    from datakd.engine.build import build_trainer

    run = setup.out / "runs" / method.label
    shutil.rmtree(run, ignore_errors=True)
    row: dict[str, Any] = {"method": method.label, "term": method.term, "setting": method.setting()}
    start = time.perf_counter()
    try:
        cfg = setup.config(
            f"smoke-{method.label}",
            run,
            STUDENT,
            setup.epochs,
            teacher={"checkpoint": str(teacher)},
            loss=method.loss_config(),
        )
        build_trainer(cfg, "distill").fit()
    except Exception as error:  # a failing loss is a result to report, not a reason to stop
        row.update(seconds=time.perf_counter() - start, verdict=f"FAILED: {type(error).__name__}: {error}")
        (run / "error.txt").parent.mkdir(parents=True, exist_ok=True)
        (run / "error.txt").write_text(traceback.format_exc())
        return row
    rows = read_metrics(run / "metrics.csv")
    column, top1 = f"loss_{method.term}", "test_top1"
    first, last = rows[0], rows[-1]
    row.update(
        seconds=time.perf_counter() - start,
        term_first=first.get(column),
        term_last=last.get(column),
        total_first=first.get("loss_total"),
        total_last=last.get("loss_total"),
        top1_last=last.get(top1),
        top1_best=max((r[top1] for r in rows if top1 in r), default=None),
        epochs=len(rows),
    )
    row["verdict"] = verdict(row["term_first"], row["term_last"], row["top1_last"])
    return row


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.3e}"
    return str(value)


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| loss | setting | own term ep1 | own term last | total ep1 | total last | top-1 last | top-1 best "
        "| time s | verdict |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        cells = [
            r["method"],
            r["setting"],
            fmt(r.get("term_first")),
            fmt(r.get("term_last")),
            fmt(r.get("total_first")),
            fmt(r.get("total_last")),
            fmt(r.get("top1_last"), 4),
            fmt(r.get("top1_best"), 4),
            f"{r['seconds']:.0f}",
            r["verdict"].replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-root", default=DEFAULT_ROOT, help="folder with the four Fashion-MNIST IDX files"
    )
    parser.add_argument("--out", type=Path, default=Path("/tmp/losses_smoke"), help="runs, cache, report")
    parser.add_argument("--epochs", type=int, default=4, help="distillation epochs per loss")
    parser.add_argument("--teacher-epochs", type=int, default=6, help="CE epochs of the cached teacher")
    parser.add_argument("--train-subset", type=int, default=4000)
    parser.add_argument("--test-subset", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the box may be shared)")
    parser.add_argument("--only", default="", help="comma-separated row labels, e.g. kd,dkd,crd-queue")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    known = {m.label: m for m in METHODS}
    wanted = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in known]
    if unknown:
        print(f"unknown --only entries {unknown}; choose from {', '.join(known)}", file=sys.stderr)
        return 2
    methods = [known[name] for name in wanted] if wanted else list(METHODS)
    setup = Setup(
        data_root=args.data_root,
        out=args.out,
        epochs=args.epochs,
        train_subset=args.train_subset,
        test_subset=args.test_subset,
        batch_size=args.batch_size,
        teacher_epochs=args.teacher_epochs,
        seed=args.seed,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    teacher, teacher_top1, teacher_seconds = train_teacher(setup)
    rows = []
    for method in methods:
        row = distil(setup, method, teacher)
        rows.append(row)
        print(
            f"{method.label:>10}: {fmt(row.get('term_first'))} -> {fmt(row.get('term_last'))}  "
            f"top-1 {fmt(row.get('top1_last'))}  {row['seconds']:.0f} s  {row['verdict']}",
            flush=True,
        )
    total = time.perf_counter() - start
    header = (
        f"Fashion-MNIST slice {setup.train_subset} train / {setup.test_subset} test (28×28 grayscale), "
        f"teacher {TEACHER} ({setup.teacher_epochs} CE epochs, top-1 {teacher_top1:.2f} %), "
        f"student {STUDENT}, {setup.epochs} epochs, batch {setup.batch_size}, SGD lr {setup.lr} "
        f"(×0.1 for the last quarter), seed {setup.seed}, {args.threads} CPU thread(s). "
        "Own term = metrics.csv loss_<term> (unweighted epoch mean; total is weighted); "
        f"ok = own term decreased and top-1 > {TOP1_OK:g} %. "
        f"Total {total:.0f} s (teacher {teacher_seconds:.0f} s)."
    )
    markdown = header + "\n\n" + table(rows) + "\n"
    print("\n" + markdown)
    (args.out / "losses_smoke.md").write_text(markdown)
    report = {
        "setup": {
            "data_root": setup.data_root,
            "train_subset": setup.train_subset,
            "test_subset": setup.test_subset,
            "epochs": setup.epochs,
            "batch_size": setup.batch_size,
            "teacher": TEACHER,
            "teacher_epochs": setup.teacher_epochs,
            "teacher_top1": teacher_top1,
            "student": STUDENT,
            "seed": setup.seed,
            "threads": args.threads,
        },
        "total_seconds": total,
        "teacher_seconds": teacher_seconds,
        "rows": rows,
    }
    (args.out / "losses_smoke.json").write_text(json.dumps(report, indent=2))
    return 0 if all(r["verdict"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
