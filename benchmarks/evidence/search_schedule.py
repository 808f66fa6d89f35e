"""Search the II-KD student's PBA schedule for the evidence benchmark (the ``iikd_pba`` arm) on a CPU.

`datakd pba search` needs Ray, so this runs on the CPU machine, not next to the GPU runs. The search sees
only the benchmark's own 2,000-image student subset: that subset is written out as its own IDX folder and
the search carves its validation images from it (``--val-size``), so the test split is never looked at.
Its teacher is a ResNet-20 trained here on a slice of the training split (a CPU cannot train the
full-data teacher in time); the search only *chooses* a schedule, the GPU replay distils from the real
full-data teacher. The result is copied to ``benchmarks/evidence/iikd_student_schedule.json``.

    OMP_NUM_THREADS=1 python benchmarks/evidence/search_schedule.py \
        --data-root ../shared/data/fashion-mnist --out runs/evidence-search

The defaults (population 4, 6 epochs per member) are sized to finish on a shared 2-core CPU; README.md says
what that search found and cost. Run 5 searched run 3's regime instead, on its 500-image subset with the
cached full-data teacher (``--train-size 500 --val-size 100 --teacher-checkpoint ...``; README.md "Run 5").
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from benchmarks.evidence import arms as A  # noqa: E402
from benchmarks.evidence.protocol import arm_config, base_config, write_yaml  # noqa: E402
from datakd.data.fashion_mnist import FILES, read_split  # noqa: E402
from datakd.data.splits import take_subset  # noqa: E402
from datakd.sweep import run_finished  # noqa: E402


def write_idx(path: Path, array: np.ndarray) -> None:
    """uint8 IDX, gzipped: magic 0x0000 08 NDIM, big-endian dims, payload."""
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path.with_name(path.name + ".gz"), "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def write_subset_folder(data_root: Path, out: Path, size: int, seed: int) -> Path:
    """The student subset (the same images `data.train_subset` picks) as a dataset of its own."""
    folder = out / f"subset{size}"
    if (folder / "train-labels-idx1-ubyte.gz").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    subset = take_subset(read_split(data_root, "train"), size, seed=seed)
    write_idx(folder / FILES["train"][0], subset.images[:, 0].numpy())
    write_idx(folder / FILES["train"][1], subset.labels.numpy())
    for name in FILES["test"]:  # present so the dataset loads; a search with --val-size never reads it
        shutil.copy(data_root / f"{name}.gz", folder / f"{name}.gz")
    return folder


def run(cmd: list[str], log: Path) -> None:
    print("$", " ".join(cmd), flush=True)
    with open(log, "a") as handle:
        code = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT).returncode
    if code:
        raise SystemExit(f"failed (exit {code}); see {log}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--out", default="runs/evidence-search")
    parser.add_argument("--train-size", type=int, default=A.TRAIN_SIZE, help="the student subset (run.py's)")
    parser.add_argument(
        "--teacher-checkpoint",
        default=None,
        help="an existing teacher (e.g. run.py's cached full-data one) instead of training a CPU teacher",
    )
    parser.add_argument("--teacher-images", type=int, default=3000, help="CPU teacher's training slice")
    parser.add_argument("--teacher-epochs", type=int, default=3)
    parser.add_argument("--population", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=6, help="epochs per member (replay stretches)")
    parser.add_argument("--val-size", type=int, default=500, help="validation images carved from the subset")
    parser.add_argument("--perturbation-interval", type=int, default=2)
    parser.add_argument("--num-cpus", type=int, default=1)
    parser.add_argument("--schedule", default=str(A.SCHEDULE_FILE), help="where to copy the schedule")
    args = parser.parse_args()
    data_root, out = Path(args.data_root).resolve(), Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    subset = write_subset_folder(data_root, out, args.train_size, A.DATA["split_seed"])
    teacher_checkpoint = search_teacher(args, data_root, out, started)
    student = arm_config(
        "iikd", A.scaled_arms(A.EPOCHS)["iikd"], A.EPOCHS, subset, "cpu", {}, out, train_size=args.train_size
    )
    student["teacher"]["checkpoint"] = str(teacher_checkpoint)
    recipe = write_yaml(student, out / "student.yaml")
    search = out / "search"
    cmd = [
        sys.executable, "-m", "datakd", "pba", "search", "--role", "student", "--config", str(recipe),
        "--data-root", str(subset), "--population", str(args.population), "--epochs", str(args.epochs),
        "--train-size", str(args.train_size - args.val_size), "--val-size", str(args.val_size),
        "--perturbation-interval", str(args.perturbation_interval), "--synch",
        "--num-cpus", str(args.num_cpus), "--device", "cpu", "--out", str(search), "--quiet",
    ]  # fmt: skip
    run(cmd, out / "search.log")
    shutil.copy(search / "schedule.json", args.schedule)
    print(f"schedule → {args.schedule}; {time.time() - started:.0f} s in all", flush=True)
    return 0


def search_teacher(args: argparse.Namespace, data_root: Path, out: Path, started: float) -> Path:
    """The search's teacher: the given checkpoint, or a ResNet-20 trained here on a slice of the split."""
    if args.teacher_checkpoint:
        return Path(args.teacher_checkpoint).resolve()
    teacher_dir = out / "teacher"
    if not run_finished(teacher_dir):
        cfg = base_config(
            "evidence-search-teacher", A.TEACHERS["main"], args.teacher_epochs, data_root, "cpu"
        )
        cfg["data"]["train_subset"] = args.teacher_images
        cfg["data"]["test_subset"] = 1000  # its accuracy is only reported; a full test pass per epoch is dear
        cfg["loss"] = {"ce": {"weight": 1.0}}
        recipe = write_yaml(cfg, out / "teacher.yaml")
        run(
            [
                sys.executable,
                "-m",
                "datakd",
                "train",
                "--config",
                str(recipe),
                "--out",
                str(teacher_dir),
                "--quiet",
            ],
            out / "teacher.log",
        )
    teacher = json.loads((teacher_dir / "summary.json").read_text())
    print(f"search teacher: top-1 {teacher['top1_last']:.2f} after {time.time() - started:.0f} s", flush=True)

    return teacher_dir / "last.pt"


if __name__ == "__main__":
    raise SystemExit(main())
