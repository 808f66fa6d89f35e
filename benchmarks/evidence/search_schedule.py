"""The role-wise PBA searches of the evidence benchmark (paper 002): the teacher's and the student's schedule.

Both searches run `datakd pba search` (Ray Tune) with the same data, population and length, so that their
schedules differ only by the role: every member trains on the students' own 2,000-image subset (the images
`data.train_subset` picks with `split_seed`, exactly those of the student arms) and is validated on 10,000
*other* training images (`data.val_outside_subset`: drawn with the same seed from the images the subset
left), never on the test split. The students never see a validation image. Each member runs the student's
full schedule (60 epochs, no stretching); population 16, an exploit every 3 epochs, synchronous PBT.

* Stage β (``--role student``, arm ``iikd_pba``): members are the II-KD student (`arms.ARMS["iikd"]`)
  distilled from the protocol's full-data teacher (the one run.py trains, found by its content hash under
  ``--work``, or ``--teacher-checkpoint``). That teacher saw the validation images, as paper 002's Stage-β
  teacher (retrained on the full data) did; the students did not.
* Stage α (``--role teacher``, arm ``iikd_pba_teacher_schedule``): members are the teacher's architecture
  trained from the labels alone, with the CE arm's recipe (the same data, optimizer and length).

The schedules go to `arms.SCHEDULE_FILE` and `arms.TEACHER_SCHEDULE_FILE`; `rolewise_contrast.json` beside
them (and OUT/rolewise.json) says how they differ (`schedule_contrast`). Rerunning the same command
resumes an interrupted search.

    PYTHONPATH=. python benchmarks/evidence/search_schedule.py --data-root ../shared/data/fashion-mnist \\
        --out runs/rolewise-search --num-cpus 16
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from benchmarks.common import content_hash  # noqa: E402
from benchmarks.evidence import arms as A  # noqa: E402
from benchmarks.evidence.protocol import arm_config, teacher_config, write_yaml  # noqa: E402
from datakd.augmenters.pba_ops import OPS  # noqa: E402
from datakd.augmenters.pba_policy import NUM_ENTRIES, PROB_MAX, Schedule, entry_op  # noqa: E402
from datakd.sweep import run_finished  # noqa: E402

ROLES = ("teacher", "student")
CONTRAST_NAME = "rolewise_contrast.json"  # written next to the student schedule, to commit with it


def search_recipe(
    role: str,
    data_root: Path,
    device: str,
    out: Path,
    teacher_checkpoint: Path | None = None,
    train_size: int = A.TRAIN_SIZE,
    val_size: int = A.SEARCH_VAL_SIZE,
    epochs: int = A.EPOCHS,
) -> dict[str, Any]:
    """The recipe a role's members run: the student arm's (or, for the teacher, the CE arm's with the
    teacher's network), validated on `val_size` training images outside the students' subset."""
    arms = A.scaled_arms(epochs)
    if role == "student":
        values = arm_config(
            "iikd", arms["iikd"], epochs, data_root, device, {"main": teacher_checkpoint}, out, train_size
        )
    elif role == "teacher":
        values = arm_config("ce", arms["ce"], epochs, data_root, device, {}, out, train_size)
        values["student"]["name"] = A.TEACHERS["main"]
    else:
        raise ValueError(f"unknown role {role!r}; choose from {', '.join(ROLES)}")
    values["name"] = f"evidence-search-{role}"
    values["data"].update(val_size=val_size, val_outside_subset=True)
    return values


def search_command(role: str, recipe: Path, search: Path, args: argparse.Namespace) -> list[str]:
    """`datakd pba search` for one role; ``--seed`` is the split seed, so the subset is the students'."""
    cmd = [
        sys.executable, "-m", "datakd", "pba", "search", "--role", role, "--config", str(recipe),
        "--population", str(args.population), "--epochs", str(args.epochs),
        "--train-size", str(args.train_size), "--val-size", str(args.val_size),
        "--perturbation-interval", str(args.perturbation_interval), "--seed", str(A.DATA["split_seed"]),
        "--synch", "--device", args.device, "--gpus-per-trial", str(args.gpus_per_trial),
        "--out", str(search), "--quiet",
    ]  # fmt: skip
    if args.num_cpus:
        cmd += ["--num-cpus", str(args.num_cpus)]
    return cmd


def op_profile(schedule: Schedule, epochs: int) -> dict[str, float]:
    """Each op's application probability (both copies summed) averaged over a run of `epochs`."""
    totals = dict.fromkeys(OPS, 0.0)
    for epoch in range(epochs):
        policy = schedule.policy_at(epoch, epochs)
        for entry in range(NUM_ENTRIES):
            totals[entry_op(entry)] += policy[2 * entry] / PROB_MAX
    return {op: round(total / epochs, 4) for op, total in totals.items()}


def schedule_contrast(student: Schedule, teacher: Schedule, epochs: int = A.EPOCHS) -> dict[str, Any]:
    """How the two roles' schedules differ over a run of `epochs` (paper 002 Figs. 3-4 compare the ops
    each emphasises). Identical schedules make the role-wise claim an A/A comparison, so say so."""
    profiles = {"student": op_profile(student, epochs), "teacher": op_profile(teacher, epochs)}
    same = sum(student.policy_at(e, epochs) == teacher.policy_at(e, epochs) for e in range(epochs))
    emphasised = {
        role: [op for op, p in sorted(profile.items(), key=lambda kv: -kv[1]) if p > 0][:5]
        for role, profile in profiles.items()
    }
    return {
        "epochs": epochs,
        "identical": same == epochs,
        "epochs_with_the_same_policy": same,
        "empty": {role: not any(profile.values()) for role, profile in profiles.items()},
        "profile_l1_distance": round(
            sum(abs(profiles["student"][o] - profiles["teacher"][o]) for o in OPS), 4
        ),
        "emphasised": emphasised,
        "profiles": profiles,
    }


def run(cmd: list[str], log: Path) -> None:
    print("$", " ".join(cmd), flush=True)
    with open(log, "a") as handle:
        code = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT).returncode
    if code:
        raise SystemExit(f"failed (exit {code}); see {log}")


def search_teacher(
    checkpoint: str | None, data_root: Path, work: Path, device: str, epochs: int, log: Path
) -> Path:
    """Stage β's teacher: the given checkpoint, or the protocol's main teacher exactly as run.py trains it
    (the same content-hash folder under `work`, so either script re-uses the other's)."""
    if checkpoint:
        return Path(checkpoint).resolve()
    model = A.TEACHERS["main"]
    cfg = teacher_config(model, epochs, data_root, device)
    run_dir = work / "teachers" / f"{model}-{content_hash(cfg, data_root)}"
    if not run_finished(run_dir):
        recipe = write_yaml(cfg, log.parent / "teacher.yaml")
        cmd = [sys.executable, "-m", "datakd", "train", "--config", str(recipe), "--out", str(run_dir)]
        run([*cmd, *(["--resume"] if (run_dir / "last.pt").is_file() else []), "--quiet"], log)
    summary = json.loads((run_dir / "summary.json").read_text())
    print(f"search teacher {run_dir}: test top-1 {summary['top1_last']:.2f}", flush=True)
    return run_dir / "last.pt"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", required=True, help="folder with the four Fashion-MNIST IDX files")
    p.add_argument("--out", default="runs/rolewise-search", help="recipes, searches, logs, rolewise.json")
    p.add_argument("--work", help="where the search's teacher is trained or found (default OUT/work)")
    p.add_argument("--role", default="both", choices=(*ROLES, "both"), help="which search(es) to run")
    p.add_argument("--teacher-checkpoint", help="Stage β's teacher (default: the protocol's, trained here)")
    p.add_argument("--teacher-epochs", type=int, default=A.TEACHER_EPOCHS, help="the protocol teacher's")
    p.add_argument("--train-size", type=int, default=A.TRAIN_SIZE, help="the students' subset (run.py's)")
    p.add_argument("--val-size", type=int, default=A.SEARCH_VAL_SIZE, help="validation images outside it")
    p.add_argument("--population", type=int, default=A.SEARCH_POPULATION)
    p.add_argument("--epochs", type=int, default=A.EPOCHS, help="epochs per member: the student's schedule")
    p.add_argument("--perturbation-interval", type=int, default=A.SEARCH_PERTURBATION_INTERVAL)
    p.add_argument("--device", default="cpu", help="device of each member (cpu, cuda)")
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="Ray GPUs per member (with cuda)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--schedule", default=str(A.SCHEDULE_FILE), help="where the student schedule goes")
    p.add_argument("--teacher-schedule", default=str(A.TEACHER_SCHEDULE_FILE), help="and the teacher's")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data_root, out = Path(args.data_root).resolve(), Path(args.out).resolve()
    work = Path(args.work).resolve() if args.work else out / "work"
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    targets = {"student": Path(args.schedule), "teacher": Path(args.teacher_schedule)}
    for role in ROLES if args.role == "both" else (args.role,):  # the teacher's first: it needs nothing
        search = out / f"search-{role}"
        if not (search / "schedule.json").is_file():
            teacher = None
            if role == "student":
                log = out / "teacher.log"
                teacher = search_teacher(
                    args.teacher_checkpoint, data_root, work, args.device, args.teacher_epochs, log
                )
            values = search_recipe(
                role, data_root, args.device, out, teacher, args.train_size, args.val_size, args.epochs
            )
            recipe = write_yaml(values, out / f"{role}.yaml")
            run(search_command(role, recipe, search, args), out / f"search-{role}.log")
        shutil.copy(search / "schedule.json", targets[role])
        print(f"{role} schedule -> {targets[role]}; {time.time() - started:.0f} s so far", flush=True)
    if all(path.is_file() for path in targets.values()):
        contrast = schedule_contrast(Schedule.load(targets["student"]), Schedule.load(targets["teacher"]))
        for path in (out / "rolewise.json", targets["student"].with_name(CONTRAST_NAME)):
            path.write_text(json.dumps(contrast, indent=1) + "\n")
        print(json.dumps({k: v for k, v in contrast.items() if k != "profiles"}, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
