"""Wall-clock cost of seed 001's mixed views: KD vs KD+TLCutMix vs KD+TLCutMix+pick, same run otherwise.

All three use the real trainer (`build_trainer` + `Trainer.train_step`) on the same batches, models and
device; only the augmenter and the `kd_mix` term differ. Steps are timed in interleaved rounds (KD,
TLCutMix, pick, KD, ...) and the median round is reported, so a machine whose load changes during the
run biases no configuration. Throughput counts loader images (the batch size), so TLCutMix and pick
process twice as many forward images per counted image as KD. On a shared machine wall-clock rounds are
noisy; the report also gives throughput per CPU second of this process (use --threads 1 for that).

Data: CIFAR-100 when --data-root holds it, else the embedded Fashion-MNIST subset padded to 32×32 RGB
(CIFAR geometry; throughput does not depend on the pixels). The teacher is randomly initialised (the cost
does not depend on its weights). `--breakdown` also times the pieces a pick step adds (teacher forward on
the 2B pool, student no-grad forward on the pool) against a KD step.

    python benchmarks/tl_overhead.py --teacher resnet56 --student resnet20 --batch-size 64 --device cpu
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common
from datakd.checkpoint import atomic_save
from datakd.config import config_from_dict
from datakd.data.loaders import Batch
from datakd.engine.build import build_trainer
from datakd.engine.trainer import Trainer
from datakd.models import create

KD_MAIN = {"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "temperature": 4.0}}
KD_MIX = {"kd_mix": {"type": "kd", "views": ["mix"], "weight": 0.9, "temperature": 4.0}}
MODES = {
    "kd": ({"name": "none"}, KD_MAIN),
    "tlcutmix": ({"name": "tlcutmix"}, {**KD_MAIN, **KD_MIX}),
    "pick": ({"name": "tlcutmix_pick"}, {**KD_MAIN, **KD_MIX}),
}


def data_section(args: argparse.Namespace) -> dict[str, Any]:
    return common.data_section(args.data_root, args.batch_size)


def make_trainer(args: argparse.Namespace, mode: str, teacher_ckpt: Path, workdir: Path) -> Trainer:
    augmenter, loss = MODES[mode]
    values = {
        "name": f"tl-bench-{mode}",
        "device": args.device,
        "out": str(workdir / mode),
        "epochs": 1000,
        "quiet": True,
        "data": data_section(args),
        "student": {"name": args.student},
        "teacher": {"checkpoint": str(teacher_ckpt)},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "constant"},
        "loss": loss,
        "augmenter": augmenter,
        "engine": {"tensorboard": False, "nan_guard": False},
    }
    trainer = build_trainer(config_from_dict(values), "distill")
    trainer.student.train()
    return trainer


def batches(trainer: Trainer) -> Iterator[Batch]:
    epoch = 0
    while True:
        yield from trainer.loader.epoch(epoch)
        epoch += 1


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(trainer: Trainer, stream: Iterator[Batch], steps: int) -> tuple[float, float]:
    """Images per wall-clock second and per CPU second of this process over `steps` training steps."""
    sync(trainer.device)
    start, cpu_start, images = time.perf_counter(), time.process_time(), 0
    for _ in range(steps):
        batch = next(stream)
        trainer.train_step(batch)
        images += len(batch)
    sync(trainer.device)
    return images / (time.perf_counter() - start), images / (time.process_time() - cpu_start)


def breakdown(trainer: Trainer, stream: Iterator[Batch], repeats: int) -> dict[str, float]:
    """Milliseconds of the pieces of a step (median of `repeats`)."""
    batch = next(stream)
    pool = torch.cat([batch.images, batch.images])
    student, teacher = trainer.student, trainer.teacher
    assert teacher is not None

    def timed(fn) -> float:
        runs = []
        for _ in range(repeats):
            sync(trainer.device)
            start = time.perf_counter()
            fn()
            sync(trainer.device)
            runs.append(1000 * (time.perf_counter() - start))
        return statistics.median(runs)

    def student_train_step() -> None:
        student.zero_grad(set_to_none=True)
        student(batch.images).sum().backward()

    with torch.no_grad():
        return {
            "teacher_forward_B_ms": timed(lambda: teacher(batch.images)),
            "teacher_forward_2B_ms": timed(lambda: teacher(pool)),
            "student_nograd_forward_2B_ms": timed(lambda: student(pool)),
            "student_forward_backward_B_ms": timed(lambda: torch.enable_grad()(student_train_step)()),
        }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher", default="resnet56")
    parser.add_argument("--student", default="resnet20")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per configuration and round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--data-root", help="CIFAR-100 folder (default: embedded data at CIFAR geometry)")
    parser.add_argument("--breakdown", action="store_true", help="also time the pieces of a step")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        num_classes = 100 if args.data_root else 10
        teacher_ckpt = workdir / "teacher.pt"
        model = create(args.teacher, num_classes)
        atomic_save(
            {"model": model.state_dict(), "model_name": args.teacher, "num_classes": num_classes},
            teacher_ckpt,
        )
        trainers = {mode: make_trainer(args, mode, teacher_ckpt, workdir) for mode in MODES}
        streams = {mode: batches(trainer) for mode, trainer in trainers.items()}
        for mode, trainer in trainers.items():
            time_steps(trainer, streams[mode], args.warmup)
        rounds: dict[str, list[float]] = {mode: [] for mode in MODES}
        cpu_rounds: dict[str, list[float]] = {mode: [] for mode in MODES}
        for _ in range(args.rounds):
            for mode, trainer in trainers.items():
                wall, cpu = time_steps(trainer, streams[mode], args.steps)
                rounds[mode].append(wall)
                cpu_rounds[mode].append(cpu)
        ips = {mode: statistics.median(values) for mode, values in rounds.items()}
        cpu_ips = {mode: statistics.median(values) for mode, values in cpu_rounds.items()}
        result: dict[str, Any] = {
            "device": args.device,
            "threads": torch.get_num_threads(),
            "teacher": args.teacher,
            "student": args.student,
            "batch_size": args.batch_size,
            "steps_x_rounds": f"{args.steps}x{args.rounds}",
            **{f"{mode}_images_per_sec": value for mode, value in ips.items()},
            "tlcutmix_time_over_kd": ips["kd"] / ips["tlcutmix"],
            "pick_time_over_tlcutmix": ips["tlcutmix"] / ips["pick"],
            "pick_time_over_kd": ips["kd"] / ips["pick"],
            # the same per CPU second of this process: robust to other processes on a shared machine
            # (meaningful with --threads 1 on the CPU; with more threads it also counts spin-waiting)
            **{f"{mode}_images_per_cpu_sec": value for mode, value in cpu_ips.items()},
            "cpu_tlcutmix_time_over_kd": cpu_ips["kd"] / cpu_ips["tlcutmix"],
            "cpu_pick_time_over_tlcutmix": cpu_ips["tlcutmix"] / cpu_ips["pick"],
            "rounds_images_per_sec": {mode: [round(v, 1) for v in values] for mode, values in rounds.items()},
        }
        if args.breakdown:
            result["breakdown"] = breakdown(trainers["kd"], streams["kd"], max(args.rounds, 3))
    print(json.dumps(_rounded(result), indent=1))


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


if __name__ == "__main__":
    main()
