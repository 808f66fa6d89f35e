"""Evidence benchmark: does each seed paper's claim hold on real images, in the regime the claim is about?

A ResNet-20 teacher trained on the **full** Fashion-MNIST training split (cached by content hash) teaches
ResNet-8 students on a fixed class-balanced 2,000-image subset for 60 epochs, evaluated on the full 10,000
test images (last-epoch top-1). Every arm (`arms.ARMS`) runs the same seeds; a seed fixes the student's
initialisation and data order, so two arms' runs with one seed are paired. Each claim (`arms.CLAIMS`) gets
the paired difference, its 95 % t-interval and a verdict (`stats.judge`). The design is fixed before any
run: the seeds are the protocol's (`arms.SEEDS_PER_CLAIM`: 10 on a GPU, 8 on the CPU). `--adaptive` adds
seeds to claims still inconclusive at their first seeds; then every such look is recorded in meta.json and
the verdict spends its 5 % over the looks (a Pocock boundary) and says "after a look".

Results go to OUT/runs.csv (one row per finished run, appended as it finishes), OUT/meta.json, and OUT/raw/
(per run: summary.json, metrics.csv.gz and TST's tst_policy.csv.gz): a results folder from which
`python benchmarks/evidence/report.py --results OUT` writes RESULTS.md and the figure.

    python benchmarks/evidence/run.py --data-root ../shared/data/fashion-mnist --out runs/evidence
    python benchmarks/evidence/run.py --data-root DIR --out OUT --arms kd,tlcutmix --seeds 0,1 \\
        --train-size 1000 --epochs 40
    python benchmarks/evidence/run.py --out OUT --aggregate-only      # RESULTS.md + PNG from OUT/runs.csv
    python benchmarks/evidence/run.py --smoke --out /tmp/ev           # the pipeline in under a minute

Reruns skip finished runs and resume killed ones. A full or read-only disk (the runner's own files, or a
run's, exit 74) ends the runner with one line naming the file and exit 74, its files intact; the same
command continues once there is space. On a GPU, `--device cuda --jobs 12` runs twelve student
processes at once on one GPU; `--deadline-minutes` stops launching runs when time is short.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import content_hash, run_logged, write_yaml  # noqa: E402
from benchmarks.evidence import arms as A  # noqa: E402
from benchmarks.evidence import report  # noqa: E402
from benchmarks.evidence.protocol import arm_config, teacher_config  # noqa: E402
from benchmarks.evidence.stats import INCONCLUSIVE, paired  # noqa: E402
from datakd.checkpoint import atomic_write_text  # noqa: E402
from datakd.faults import STORAGE_EXIT_CODE, StorageError, check_writable, storage_fault  # noqa: E402
from datakd.sweep import SweepRun, command_for, plan, run_finished, run_state  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "fashion-mnist"
# Rough cost of one run relative to KD (CPU measurements of the first fmnist benchmark): the dearest start
# first in each wave so the slowest runs do not trail at the end. TST's search passes are a full split long.
COST = {
    "tlcutmix_pick": 3,
    "dpk": 3,
    "dpk_fixed": 3,
    "dpk_t8": 3,
    "dpk_t32": 3.5,
    "tst": 4,
    "kd_tstloss": 2,
    "tst_fixed": 2.5,
    "iikd": 2,
    "iikd_pba": 2,
    "iikd_pba_ops": 2,
    "iikd_pba_teacher_schedule": 2,
}


@dataclass(frozen=True)
class Protocol:
    epochs: int
    teacher_epochs: int
    train_size: int
    teacher_size: int | None  # None: the full training split
    test_size: int | None  # None: the full test split
    device: str
    eval_every: int = 1  # test-split passes every N epochs (and always after the last)


# What a user does after a storage fault: the runner skips finished runs and resumes the others by itself.
RERUN_HINT = (
    "free space (or choose another --out/--work), then rerun the same command: finished runs are kept "
    "and skipped, unfinished ones resume from their last.pt"
)
_CHILD_ERROR = re.compile(r"^datakd [\w-]+: error: (.+)$")


def launch(cmd: list[str], log: Path, threads: int) -> int:
    """`run_logged`, with the log named when writing it fails (a failed write() names no file)."""
    try:
        return run_logged(cmd, log, threads)
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(log)
        raise


def child_storage_fault(name: str, log: Path, folders: list[Path]) -> StorageError:
    """A run's process exited 74 (storage): its own line from its log, without its advice (the runner's
    is another); when the full disk swallowed that line too, the first of `folders` that refuses a file."""
    fact = None
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    for line in reversed(lines):
        match = _CHILD_ERROR.match(line.strip())
        if match:
            fact = match.group(1).rsplit("; ", 1)[0]
            break
    for folder in folders if fact is None else []:
        try:
            check_writable(folder, "folder")
        except StorageError as exc:
            fact = str(exc).split("; ")[0]
            break
    fact = fact or f"a storage fault (exit {STORAGE_EXIT_CODE}); its message is lost, see {log}"
    fault = StorageError(f"{name}: {fact}; {RERUN_HINT}")
    fault.fact = f"{name}: {fact}"
    return fault


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True
        )
        return rev + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class Runner:
    """Teachers, shared artefacts, then arms × seeds on a pool of processes; rows appended as runs finish."""

    def __init__(self, args: argparse.Namespace, proto: Protocol) -> None:
        self.args, self.proto = args, proto
        self.data_root = Path(args.data_root).resolve()
        self.out = Path(args.out).resolve()
        self.work = Path(args.work).resolve() if args.work else self.out / "work"
        self.deadline = time.monotonic() + args.deadline_minutes * 60 if args.deadline_minutes else None
        self.lock = threading.Lock()
        self.revision = args.revision or git_revision()
        self.arms = A.scaled_arms(proto.epochs)
        self.teachers: dict[str, Path] = {}
        self.recipes: dict[str, tuple[Path, str]] = {}
        self.failed: list[str] = []
        self.storage_faults: list[StorageError] = []  # a run's exit 74: no further run is started
        # OUT/meta.json, rewritten after every finished run: a benchmark cut by a timeout keeps its record.
        self.meta: dict[str, Any] = {}
        self.invocation: dict[str, Any] = {}
        self.started = time.time()

    def save_meta(self) -> None:
        self.invocation["wall_s"] = round(time.time() - self.started, 1)
        self.invocation["failed"] = list(self.failed)
        report.write_json(self.meta, self.out / "meta.json")

    # ------------------------------------------------------------------ setup
    def _data(self, cfg: dict[str, Any], student: bool = True) -> dict[str, Any]:
        """The protocol's test-split settings. `--eval-every` is the students' only: in a teacher's recipe it
        would change the teacher's content hash, and so retrain a cached teacher, for a setting that does
        not change its weights (a teacher is tested after every epoch; its 60k-image epochs dwarf that)."""
        if self.proto.test_size:
            cfg["data"]["test_subset"] = self.proto.test_size
        if student and self.proto.eval_every != 1:
            cfg["engine"]["eval_every"] = self.proto.eval_every
        return cfg

    def prepare(self, roles: list[str], tst: bool) -> None:
        """Teachers (each once: a finished run with the same content hash, from any machine, is re-used)
        and TST Stage I, all at the same time: none needs another."""
        todo: list[tuple[str, list[str]]] = []
        for role in roles:
            model = A.TEACHERS[role]
            cfg = self._data(
                teacher_config(model, self.proto.teacher_epochs, self.data_root, self.proto.device),
                student=False,
            )
            if self.proto.teacher_size:
                cfg["data"]["train_subset"] = self.proto.teacher_size
            run_dir = self.work / "teachers" / f"{model}-{content_hash(cfg, self.data_root)}"
            self.teachers[role] = run_dir / "last.pt"
            if run_finished(run_dir):
                print(f"teacher {role} ({model}): cached at {run_dir}", flush=True)
                continue
            recipe = write_yaml(cfg, self.out / "recipes" / f"teacher_{role}.yaml")
            cmd = [sys.executable, "-m", "datakd", "train", "--config", str(recipe), "--out", str(run_dir)]
            if (run_dir / "last.pt").is_file():
                cmd.append("--resume")
            todo.append((f"teacher_{role}", [*cmd, "--quiet"]))
        if tst:  # datakd caches the encoder file by content hash; a rerun returns at once
            cmd = [sys.executable, "-m", "datakd", "tst", "fit", "--config", str(self.recipe("tst")[0])]
            todo.append(("tst_fit", [*cmd, "--device", self.proto.device, "--quiet"]))
        # The run slots' threads, shared by what actually trains (a cached teacher takes none).
        threads = max(1, self.args.threads * self.args.jobs // max(1, len(todo)))
        t0 = time.perf_counter()

        def one(job: tuple[str, list[str]]) -> int:
            name, cmd = job
            code = launch(cmd, self.out / "logs" / f"{name}.log", threads)
            print(
                f"{name}: {'done' if code == 0 else 'FAILED'} in {time.perf_counter() - t0:.0f} s", flush=True
            )
            return code

        with ThreadPoolExecutor(max_workers=max(1, len(todo))) as pool:
            codes = list(pool.map(one, todo))
        for (name, _), code in zip(todo, codes):
            if code == STORAGE_EXIT_CODE:
                raise child_storage_fault(name, self.out / "logs" / f"{name}.log", [self.work, self.out])
            if code != 0:
                raise SystemExit(f"{name} failed; see {self.out / 'logs' / f'{name}.log'}")
        for role in roles:
            summary = json.loads((self.teachers[role].parent / "summary.json").read_text())
            print(f"teacher {role} ({A.TEACHERS[role]}): test top-1 {summary['top1_last']:.2f}", flush=True)

    def recipe(self, arm: str) -> tuple[Path, str]:
        if arm not in self.recipes:
            values = self._data(
                arm_config(
                    arm,
                    self.arms[arm],
                    self.proto.epochs,
                    self.data_root,
                    self.proto.device,
                    self.teachers,
                    self.work,
                    train_size=self.proto.train_size,
                    schedule=Path(self.args.schedule).resolve(),
                    teacher_schedule=Path(self.args.teacher_schedule).resolve(),
                )
            )
            path = write_yaml(values, self.out / "recipes" / f"{arm}.yaml")
            self.recipes[arm] = (path, "train" if arm == "ce" else "distill")
        return self.recipes[arm]

    # ------------------------------------------------------------------ runs
    def run_of(self, arm: str, seed: int) -> SweepRun:
        return plan(self.work / "arms" / arm, [seed], [])[0]

    def train_top1(self, arm: str, run: SweepRun) -> float:
        """The last checkpoint's top-1 on its own training subset, no augmentation (does it overfit?)."""
        import torch

        from datakd.config import config_from_dict
        from datakd.data.build import eval_loader, load_dataset, make_normalizer
        from datakd.engine.evaluate import evaluate
        from datakd.models.loading import load_model

        cfg = config_from_dict(yaml.safe_load(self.recipe(arm)[0].read_text()))
        bundle, _ = load_dataset(cfg.data, seed=run.seed)
        bundle = replace(bundle, test=bundle.train)
        device = torch.device("cpu")
        model, _ = load_model(str(run.run_dir / "last.pt"), bundle.num_classes, None)
        return evaluate(model, eval_loader(cfg.data, bundle, make_normalizer(bundle, device), device))["top1"]

    def keep_raw(self, arm: str, run: SweepRun) -> None:
        """The run's summary.json, per-epoch metrics.csv and TST's θ trajectory into OUT/raw/ARM-seedS/
        (CSV gzipped): the results folder then holds every number RESULTS.md rests on."""
        raw = self.out / "raw" / f"{arm}-seed{run.seed}"
        raw.mkdir(parents=True, exist_ok=True)
        summary = run.run_dir / "summary.json"
        report.save_atomically(lambda tmp: shutil.copyfile(summary, tmp), raw / "summary.json")
        for name in ("metrics.csv", report.POLICY):
            source = run.run_dir / name
            if source.is_file():
                report.save_atomically(lambda tmp, source=source: _gzip(source, tmp), raw / f"{name}.gz")

    def revision_of(self, run: SweepRun) -> str:
        """The revision that trained `run`: the one written beside it when it finished, else "unknown".

        A run this invocation finds already finished (another out's, sharing `--work`) was trained by its
        launcher's revision, not this one (run 9 mislabelled run 8's runs so)."""
        path = revision_file(run)
        return path.read_text().strip() if path.is_file() else "unknown"

    def record(self, arm: str, run: SweepRun, wall: float | None) -> dict[str, Any]:
        import torch

        summary = json.loads((run.run_dir / "summary.json").read_text())
        with self.lock:  # one CPU evaluation at a time (two threads); short next to a run
            torch.set_num_threads(2)
            train_top1 = self.train_top1(arm, run)
        row = {
            "arm": arm,
            "seed": run.seed,
            "top1_last": round(summary["top1_last"], 2),
            "top1_best": round(summary["top1_best"], 2),
            "train_top1": round(train_top1, 2),
            "wall_s": round(wall if wall is not None else summary["wall_seconds"], 1),
            "images_per_sec": round(summary["images_per_sec"], 1),
            "git_revision": self.revision_of(run),
            "epochs": summary["epochs"],
            "train_size": self.proto.train_size,
            "test_images": self.proto.test_size or "full",
            "device": summary["device"],
            "device_hours": summary.get("device_hours", ""),
        }
        self.keep_raw(arm, run)
        with self.lock:
            report.append_row(self.out / "runs.csv", row)
            self.save_meta()
        return row

    def time_left(self) -> bool:
        return self.deadline is None or time.monotonic() < self.deadline

    def execute(self, todo: list[tuple[str, int]], adaptive: Adaptive | None = None) -> None:
        """Run `todo` on `--jobs` workers; with `adaptive`, a worker that finds the queue empty adds the
        seeds of every claim that is inconclusive once both its arms have their first seeds, so the
        device never idles waiting for the slowest first-round run."""
        recorded = {(r["arm"], int(r["seed"])) for r in report.read_rows(self.out / "runs.csv")}
        queue: deque[tuple[str, int]] = deque()
        for arm, seed in todo:
            run = self.run_of(arm, seed)
            if run_state(run) == "done":
                if (arm, seed) not in recorded:
                    self.record(arm, run, None)
                continue
            queue.append((arm, seed))
        scheduled = set(todo)
        total, done = [len(queue)], [0]
        started = time.monotonic()

        def one(item: tuple[str, int]) -> None:
            arm, seed = item
            run = self.run_of(arm, seed)
            recipe, mode = self.recipe(arm)
            t0 = time.perf_counter()
            cmd = command_for(run, recipe, mode, [], True)
            log = self.out / "logs" / f"{arm}-seed{seed}.log"
            code = launch(cmd, log, self.args.threads)
            wall = time.perf_counter() - t0
            with self.lock:
                done[0] += 1
            where = f"[{done[0]}/{total[0]} +{time.monotonic() - started:.0f}s] {arm} seed {seed}"
            if code == STORAGE_EXIT_CODE:  # the next runs would meet the same disk: start none
                fault = child_storage_fault(f"{arm} seed {seed}", log, [run.run_dir, self.out])
                print(f"{where}: storage fault after {wall:.0f} s; no further run is started")
                with self.lock:
                    self.storage_faults.append(fault)
                return
            if code != 0:
                self.failed.append(f"{arm} seed {seed}")
                print(f"{where}: FAILED (exit {code}) after {wall:.0f} s; see logs/{arm}-seed{seed}.log")
                return
            # After the run, not before: on a full disk the run's own exit-74 line names what failed.
            atomic_write_text(self.revision + "\n", revision_file(run))
            row = self.record(arm, run, wall)
            print(f"{where}: top-1 {row['top1_last']:.2f} (train {row['train_top1']:.2f}) in {wall:.0f} s")

        running: set[Future[None]] = set()
        with ThreadPoolExecutor(max_workers=max(1, self.args.jobs)) as pool:
            while True:
                while (
                    queue and len(running) < self.args.jobs and self.time_left() and not self.storage_faults
                ):
                    running.add(pool.submit(one, queue.popleft()))
                if not queue and adaptive is not None and self.time_left() and not self.storage_faults:
                    rows = report.read_rows(self.out / "runs.csv")
                    extra = [i for i in adaptive_seeds(rows, *adaptive) if i not in scheduled]
                    if extra:
                        print(f"adaptive seeds: {len(extra)} more runs for inconclusive claims", flush=True)
                        with self.lock:  # the look that added them: the verdict must spend 5 % over it
                            record_looks(self.meta, looks_behind(rows, adaptive, extra))
                            self.save_meta()
                        queue.extend(extra)
                        scheduled.update(extra)
                        total[0] += len(extra)
                        continue
                if queue and not self.time_left():
                    print(f"deadline: {len(queue)} runs not started", flush=True)
                    queue.clear()
                if not running:
                    break
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    future.result()
        if self.storage_faults:
            raise self.storage_faults[0]


def _gzip(source: Path, target: str) -> None:
    with open(source, "rb") as src, gzip.open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)


def record_teachers(meta: dict[str, Any], teachers: dict[str, Path]) -> None:
    """Each teacher's summary.json into OUT/meta.json. Updated, not replaced: a rerun with fewer arms
    keeps the teachers that earlier invocations into the same OUT used (RESULTS.md names them all)."""
    meta.setdefault("teachers", {}).update(
        {role: json.loads((path.parent / "summary.json").read_text()) for role, path in teachers.items()}
    )


def looks_behind(
    rows: list[dict[str, Any]], adaptive: Adaptive, extra: list[tuple[str, int]]
) -> dict[str, int]:
    """The looks that scheduled `extra`: the inconclusive claims whose arms got new seeds."""
    arms = {arm for arm, _ in extra}
    looked = adaptive_looks(rows, adaptive[0], adaptive[1])
    return {c.key: looked[c.key] for c in A.CLAIMS if c.key in looked and {c.better, c.worse} & arms}


def record_looks(meta: dict[str, Any], looks: dict[str, int]) -> None:
    """Add one look (claim key → seeds both arms had when it was seen) to meta.json's "looks"."""
    for key, n in looks.items():
        seen = meta.setdefault("looks", {}).setdefault(key, [])
        if n not in seen:
            seen.append(n)


def revision_file(run: SweepRun) -> Path:
    """Beside the run folder (not in it: the trainer owns that): which revision trained the run."""
    return run.run_dir.with_name(f"{run.run_dir.name}.revision")


def teacher_roles(arms: list[str]) -> list[str]:
    """The teachers these arms need: the main one (every switch ends there) and each arm's own."""
    return ["main", *sorted({A.ARMS[a].get("teacher_role", "main") for a in arms} - {"main"})]


def ordered(arms: list[str], seeds: list[int]) -> list[tuple[str, int]]:
    """Seed-major (a cut benchmark has every arm at the same seeds), dearest arm first in each seed."""
    by_cost = sorted(arms, key=lambda a: -COST.get(a, 1))
    return [(arm, seed) for seed in seeds for arm in by_cost]


# (arms of this invocation, first seeds, max seeds): what adaptive_seeds needs besides the results.
Adaptive = tuple[list[str], list[int], int]


def adaptive_looks(rows: list[dict[str, Any]], arms: list[str], first: list[int]) -> dict[str, int]:
    """The claims looked at and found inconclusive on their first seeds: claim key → seeds seen.

    A claim is judged once both its arms have finished all `first` seeds (a claim whose arm failed a
    first seed is never extended).
    """
    scores = report.scores(rows)
    looked: dict[str, int] = {}
    for claim in A.CLAIMS:
        if claim.better not in arms or claim.worse not in arms:
            continue
        better, worse = scores.get(claim.better, {}), scores.get(claim.worse, {})
        if not set(first) <= set(better) & set(worse):
            continue
        result = paired(better, worse)
        if result.verdict == INCONCLUSIVE:
            looked[claim.key] = result.n
    return looked


def adaptive_seeds(
    rows: list[dict[str, Any]], arms: list[str], first: list[int], max_seeds: int
) -> list[tuple[str, int]]:
    """Seeds 0..max_seeds−1 for both arms of every claim that is inconclusive on its first seeds."""
    scores = report.scores(rows)
    extra: set[tuple[str, int]] = set()
    for claim in A.CLAIMS:
        if claim.key in adaptive_looks(rows, arms, first):
            for arm in (claim.better, claim.worse):
                extra |= {(arm, s) for s in range(max_seeds) if s not in scores.get(arm, {})}
    return [item for item in ordered(sorted({a for a, _ in extra}), list(range(max_seeds))) if item in extra]


def preflight(device: str) -> None:
    """Fail in one line before any run if a run's process could not start (missing module, no CUDA)."""
    import importlib

    for module in ("torch", "yaml", "tqdm", "numpy"):
        try:
            importlib.import_module(module)
        except ImportError:
            raise SystemExit(f"python module {module!r} is missing; every datakd run needs it") from None
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: torch {torch.__version__} sees no CUDA device (use cpu)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=str(DEFAULT_DATA), help="folder with the four IDX files")
    p.add_argument(
        "--out", default="runs/evidence", help="results: runs.csv, meta.json, recipes, logs, metrics"
    )
    p.add_argument("--work", help="teachers, run folders and checkpoints (default OUT/work)")
    p.add_argument("--arms", default=",".join(A.ARMS), help=f"any of {', '.join(A.ARMS)}")
    p.add_argument(
        "--seeds",
        help=f"seeds of every arm (default: the design's, {A.SEEDS_PER_CLAIM} by device; with --adaptive "
        f"{','.join(map(str, A.SEEDS))} first)",
    )
    p.add_argument(
        "--adaptive",
        action="store_true",
        help="add seeds (up to --max-seeds) to claims inconclusive at their first seeds; each look is "
        "recorded and the verdict pays for it (Pocock boundary)",
    )
    p.add_argument("--max-seeds", type=int, default=A.MAX_SEEDS, help="seeds of an inconclusive claim's arms")
    p.add_argument("--no-adaptive", action="store_true", help="the default (kept for older commands)")
    p.add_argument("--epochs", type=int, default=A.EPOCHS, help=f"student epochs ({A.EPOCHS})")
    p.add_argument("--teacher-epochs", type=int, default=A.TEACHER_EPOCHS)
    p.add_argument("--train-size", type=int, default=A.TRAIN_SIZE, help="student subset (class-balanced)")
    p.add_argument("--teacher-size", type=int, help="teacher's training images (default: the full split)")
    p.add_argument("--test-size", type=int, help="test images (default: the full test split)")
    p.add_argument(
        "--eval-every", type=int, default=1, help="test every N epochs (CPU: the 10k-image pass is dear)"
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (every run on this device)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (2 on a 2-core CPU; ~12 on one GPU)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--deadline-minutes", type=float, help="launch no run after this many minutes")
    p.add_argument("--schedule", default=str(A.SCHEDULE_FILE), help="student PBA schedule of arm iikd_pba")
    p.add_argument(
        "--teacher-schedule",
        default=str(A.TEACHER_SCHEDULE_FILE),
        help="teacher PBA schedule of arm iikd_pba_teacher_schedule",
    )
    p.add_argument("--revision", help="git revision to record (default: git rev-parse of this checkout)")
    p.add_argument("--results", default=str(A.HERE / "RESULTS.md"), help="where --aggregate-only writes")
    p.add_argument("--figure", default=str(A.HERE / "evidence.png"), help="the PNG written with RESULTS.md")
    p.add_argument("--aggregate-only", action="store_true", help="only write RESULTS.md + PNG from OUT")
    p.add_argument("--smoke", action="store_true", help="300 images, 2 epochs, seed 0, arms ce,kd,tlcutmix")
    p.add_argument(
        "--merge",
        metavar="OTHER_OUT",
        help="add OTHER_OUT's runs and invocations to --out (same protocol; e.g. arms run in parallel "
        "with another --out and --work)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The command line; a storage fault (a full or read-only disk) is one line and exit 74."""
    try:
        return _main(argv)
    except Exception as exc:
        fault = storage_fault(exc, RERUN_HINT)
        if fault is None:
            raise
        print(f"evidence: error: {fault}", file=sys.stderr)
        return STORAGE_EXIT_CODE


def _main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress lines survive a run cut by a timeout
    if args.smoke:
        args.arms, args.seeds, args.adaptive = ",".join(A.SMOKE_ARMS), "0", False
        args.epochs, args.teacher_epochs, args.train_size = 2, 1, 300
        args.teacher_size, args.test_size = args.teacher_size or 500, args.test_size or 500
    out = Path(args.out).resolve()
    if args.merge:
        print(report.merge(out, Path(args.merge).resolve()))
        return 0
    if args.aggregate_only:
        report.write(out, Path(args.results), Path(args.figure))
        print(Path(args.results).read_text())
        return 0
    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(arms) - set(A.ARMS))
    if unknown:
        raise SystemExit(f"--arms: unknown arm(s) {', '.join(unknown)}; choose from {', '.join(A.ARMS)}")
    adaptive = args.adaptive and not args.no_adaptive
    if args.seeds is None:
        seeds = list(A.SEEDS) if adaptive else A.design_seeds(args.device)
    else:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.epochs < 2:
        raise SystemExit(
            f"--epochs {args.epochs}: needs at least 2 (WSL→CKM switches teacher before the end)"
        )
    if not Path(args.data_root).is_dir():
        raise SystemExit(f"--data-root {args.data_root} is not a folder with the four IDX files")
    preflight(args.device)
    for arm, schedule in (("iikd_pba", args.schedule), ("iikd_pba_teacher_schedule", args.teacher_schedule)):
        if arm in arms and not Path(schedule).is_file():
            print(f"skip {arm}: no PBA schedule at {schedule} (search_schedule.py writes it)")
            arms.remove(arm)
    proto = Protocol(
        args.epochs,
        args.teacher_epochs,
        args.train_size,
        args.teacher_size,
        args.test_size,
        args.device,
        args.eval_every,
    )
    runner = Runner(args, proto)
    meta_path = out / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {"invocations": []}
    meta.update(
        protocol=vars(proto)
        | {"student": A.STUDENT, "teachers": A.TEACHERS, "split_seed": A.DATA["split_seed"]},
        revision=runner.revision,
        machine=f"{os.cpu_count()} CPU cores ({platform.machine()}), " + report.device_name(args.device),
    )
    invocation = {
        "command": "python benchmarks/evidence/run.py " + shlex.join(sys.argv[1:]),
        "started": runner.started,
        # The design this invocation ran: fixed seeds, or first seeds + looks (recorded as they happen).
        "design": {"seeds": seeds, "adaptive": adaptive, "max_seeds": args.max_seeds if adaptive else None},
    }
    meta["invocations"].append(invocation)
    runner.meta, runner.invocation = meta, invocation
    runner.save_meta()
    print(
        f"evidence: {len(arms)} arms x seeds {seeds} on {args.device}, {args.jobs} at a time; out {out}",
        flush=True,
    )

    runner.prepare(teacher_roles(arms), bool({"tst", "tst_fixed"} & set(arms)))
    record_teachers(meta, runner.teachers)
    runner.save_meta()
    runner.execute(ordered(arms, seeds), (arms, seeds, args.max_seeds) if adaptive else None)
    runner.save_meta()
    print(f"evidence: done in {invocation['wall_s']:.0f} s; {len(runner.failed)} failed runs", flush=True)
    rows = report.read_rows(out / "runs.csv")
    print(report.claims_text(rows, report.load_looks(out, meta), report.theta_gate(out)), flush=True)
    return 1 if runner.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
