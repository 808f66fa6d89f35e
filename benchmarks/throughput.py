"""Training throughput of every datakd method against a RepDistiller-style loop and the compute bound.

All measurements run in the same process on the same data, models and device, so the ratios are meaningful:

* datakd: the real trainer (`build_trainer` + `Trainer.train_step`) fed by the device-resident loader
  (uint8 split on the device, batched crop/flip/normalise), optionally with bf16 autocast,
  channels_last and torch.compile (`--fast`, CUDA only). Each method takes the loss, augmenter and target
  transform of its shipped CIFAR-100 recipe for ResNet-56 → ResNet-20 (METHODS below); stage events are
  left out, so TST is timed in Stage III and EffDstl in each of its two stages.
* reference: what RepDistiller does: torchvision DataLoader over PIL images with per-sample
  RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize on worker processes, then a plain
  fp32 loop (teacher forward under no_grad, student forward, 0.1·CE + 0.9·KD, backward, SGD step).
* compute bound: the same teacher forward + student forward/backward/SGD step alone, on one synthetic
  batch that already sits on the device (no loader, no augmentation): what KD could reach if the input
  pipeline and the method's bookkeeping were free. `of_bound` = method img/s ÷ this.

Data: CIFAR-100 when --data-root holds it, else the embedded Fashion-MNIST subset padded to 32×32 RGB
(CIFAR geometry; the throughput does not depend on the pixel values). Teachers are randomly initialised:
throughput does not depend on the weights either.

Prints one JSON object on stdout (`ce_images_per_sec`, `kd_images_per_sec`, `reference_kd_images_per_sec`,
`ratio` = KD ÷ reference, `compute_bound_images_per_sec`, and `methods` with every method's img/s and
ratios) and a markdown table on stderr.

    python benchmarks/throughput.py --device cpu --steps 10                 # every method, CPU
    python benchmarks/throughput.py --device cuda --steps 50 --fast         # + bf16/channels_last/compile
    python benchmarks/throughput.py --methods kd,tlcutmix,tlcutmix_pick     # a subset
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common
from datakd.checkpoint import atomic_save
from datakd.config import config_from_dict
from datakd.engine.build import build_trainer
from datakd.events.tst_search import TSTSearch
from datakd.losses import functional as LF
from datakd.models import create

REPO = Path(__file__).resolve().parents[1]
R = "recipes/cifar100"
# method → (recipe whose loss/augmenter/target_transform sections are timed, changes to its loss section)
METHODS: dict[str, tuple[str | None, dict]] = {
    "ce": (None, {}),
    "kd": (f"{R}/baselines/kd_resnet56_resnet20.yaml", {}),
    "dkd": (f"{R}/baselines/dkd_resnet56_resnet20.yaml", {}),
    "dist": (f"{R}/baselines/dist_resnet56_resnet20.yaml", {}),
    "fitnet": (f"{R}/baselines/fitnet_resnet56_resnet20.yaml", {}),
    "at": (f"{R}/baselines/at_resnet56_resnet20.yaml", {}),
    "sp": (f"{R}/baselines/sp_resnet56_resnet20.yaml", {}),
    "cc": (f"{R}/baselines/cc_resnet56_resnet20.yaml", {}),
    "rkd": (f"{R}/baselines/rkd_resnet56_resnet20.yaml", {}),
    "pkt": (f"{R}/baselines/pkt_resnet56_resnet20.yaml", {}),
    "vid": (f"{R}/baselines/vid_resnet56_resnet20.yaml", {}),
    "crd": (f"{R}/baselines/crd_resnet56_resnet20.yaml", {}),
    "reviewkd": (f"{R}/baselines/reviewkd_resnet56_resnet20.yaml", {}),
    "tlmixup": (f"{R}/tl/resnet56_resnet20/tlmixup.yaml", {}),
    "tlcutmix": (f"{R}/tl/resnet56_resnet20/tlcutmix.yaml", {}),
    "tlcutmix_pick": (f"{R}/tl/resnet56_resnet20/pick.yaml", {}),
    "tst": (f"{R}/tst/resnet110-resnet20.yaml", {}),
    # Stage II: one search step (teacher and student frozen, θ_p/θ_m updated) instead of a training step.
    "tst_stage2": (f"{R}/tst/resnet110-resnet20.yaml", {}),
    "iikd": (f"{R}/rolewise/alexnet_cifar_w4a4_iikd.yaml", {}),
    "effdstl_wsl": (f"{R}/effdstl/effdstl.yaml", {}),
    "effdstl_ckm": (
        f"{R}/effdstl/effdstl.yaml",
        {"ce": {"weight": 0.0}, "wsl": {"weight": 0.0}, "ckm": {"weight": 1.0}},
    ),
    "dpk": (f"{R}/dpk/r56-r20.yaml", {}),
}


def data_section(args: argparse.Namespace) -> dict:
    return common.data_section(args.data_root, args.batch_size, args.dataset)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def method_sections(method: str, workdir: Path, args: argparse.Namespace) -> dict:
    """The loss (and augmenter / target transform) a method's shipped recipe trains with."""
    recipe, loss_changes = METHODS[method]
    if recipe is None:
        return {"loss": {"ce": {"weight": 1.0}}}
    values = yaml.safe_load((REPO / recipe).read_text())
    sections = {k: values[k] for k in ("loss", "augmenter", "target_transform") if k in values}
    for term, change in loss_changes.items():
        sections["loss"][term] = {**sections["loss"][term], **change}
    if sections.get("augmenter", {}).get("name") == "tst":
        sections["augmenter"]["encoders"] = str(tst_encoders(workdir, args))
    return sections


def tst_encoders(workdir: Path, args: argparse.Namespace) -> Path:
    """A quick Stage I fit (two iterations per op): the encoders' cost does not depend on their fit."""
    from datakd.augmenters.tst.encoder_file import FitConfig
    from datakd.config import DataConfig
    from datakd.jobs.tst_fit import fit_or_load

    path = workdir / "tst_encoders.pt"
    fit_or_load(path, DataConfig(**data_section(args)), FitConfig(max_iters=2), torch.device(args.device))
    return path


def time_trainer(
    args: argparse.Namespace, method: str, teacher_ckpt: Path, workdir: Path, fast: bool
) -> float:
    mode = "train" if method == "ce" else "distill"
    values = {
        "name": f"bench-{method}",
        "device": args.device,
        "out": str(workdir / f"{method}-{fast}"),
        "epochs": 1000,
        "quiet": True,
        "data": data_section(args),
        "student": {"name": args.student},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "constant"},
        **method_sections(method, workdir, args),
        "engine": {
            "tensorboard": False,
            "nan_guard": False,
            "amp": fast,
            "channels_last": fast,
            "compile": fast,
        },
    }
    if mode == "distill":
        values["teacher"] = {"name": args.teacher, "checkpoint": str(teacher_ckpt)}
    trainer = build_trainer(config_from_dict(values), mode)
    trainer.student.train()
    device = trainer.device
    if method == "tst_stage2":
        return time_tst_search(trainer, args)
    warmup, steps, done, images = args.warmup, args.steps, 0, 0
    start = None
    epoch = 0
    while done < warmup + steps:
        for batch in trainer.loader.epoch(epoch):
            if done == warmup:
                sync(device)
                start = time.perf_counter()
            trainer.train_step(batch)
            done += 1
            if done > warmup:
                images += len(batch)
            if done >= warmup + steps:
                break
        epoch += 1
    sync(device)
    return images / (time.perf_counter() - start)


def time_tst_search(trainer, args: argparse.Namespace) -> float:
    """TST Stage II throughput: the tst_search event's search capped at warm-up, then at the timed batches."""
    stage_two = TSTSearch()
    stage_two.search(trainer, 0, 1, max_steps=max(1, args.warmup))
    sync(trainer.device)
    start = time.perf_counter()
    stage_two.search(trainer, 1, 1, max_steps=args.steps)
    sync(trainer.device)
    return args.steps * args.batch_size / (time.perf_counter() - start)


def time_compute_bound(args: argparse.Namespace, device: torch.device, num_classes: int) -> float:
    """Teacher forward + student forward/backward/step on one resident synthetic batch: KD's ceiling."""
    teacher = create(args.teacher, num_classes).to(device).eval()
    student = create(args.student, num_classes).to(device).train()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(args.batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, num_classes, (args.batch_size,), device=device)
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            sync(device)
            start = time.perf_counter()
        with torch.no_grad():
            t_logits = teacher(x)
        s_logits = student(x)
        loss = 0.1 * F.cross_entropy(s_logits, y) + 0.9 * LF.kd(s_logits, t_logits, 4.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(device)
    return args.steps * args.batch_size / (time.perf_counter() - start)


def time_reference(args: argparse.Namespace, device: torch.device) -> float:
    """RepDistiller's loop: PIL transforms on DataLoader workers, fp32, teacher no_grad, CE + KD."""
    from datakd.config import DataConfig
    from datakd.data.build import load_dataset

    bundle, _ = load_dataset(DataConfig(**data_section(args)), seed=0)
    loader = common.reference_loader(
        bundle.train.images,
        bundle.train.labels,
        bundle.mean,
        bundle.std,
        args.batch_size,
        args.workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
    )
    teacher = create(args.teacher, bundle.num_classes).to(device).eval()
    student = create(args.student, bundle.num_classes).to(device).train()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    done, images, start = 0, 0, None
    while done < args.warmup + args.steps:
        for x, y in loader:
            if done == args.warmup:
                sync(device)
                start = time.perf_counter()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.no_grad():
                t_logits = teacher(x)
            s_logits = student(x)
            loss = 0.1 * F.cross_entropy(s_logits, y) + 0.9 * LF.kd(s_logits, t_logits, 4.0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            done += 1
            if done > args.warmup:
                images += len(y)
            if done >= args.warmup + args.steps:
                break
    sync(device)
    return images / (time.perf_counter() - start)


def markdown(result: dict, rows: dict[str, dict[str, float]]) -> str:
    lines = [
        f"{result['teacher']} → {result['student']}, batch {result['batch_size']}, {result['device']}, "
        f"{result['threads']} torch threads, {result['steps']} timed steps each; reference KD loop "
        f"{result['reference_kd_images_per_sec']:.0f} img/s, compute bound "
        f"{result['compute_bound_images_per_sec']:.0f} img/s",
        "",
        "| method | img/s | × reference KD loop | of compute bound |"
        + (" fast img/s | fast × reference |" if any("fast" in r for r in rows.values()) else ""),
        "|---|---|---|---|" + ("---|---|" if any("fast" in r for r in rows.values()) else ""),
    ]
    for name, row in rows.items():
        line = f"| {name} | {row['images_per_sec']:.0f} | {row['ratio']:.2f} | {row['of_bound']:.2f} |"
        if "fast" in row:
            line += f" {row['fast']:.0f} | {row['fast_ratio']:.2f} |"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher", default="resnet56")
    parser.add_argument("--student", default="resnet20")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"subset of {', '.join(METHODS)}")
    parser.add_argument(
        "--augmenter",
        help="time KD and KD with each of these augmenters only (e.g. tlcutmix,tlcutmix_pick or tst)",
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="DataLoader workers of the reference loop",
    )
    parser.add_argument("--dataset", default="cifar100")
    parser.add_argument("--data-root", help="folder with CIFAR (default: embedded data at CIFAR geometry)")
    parser.add_argument("--fast", action="store_true", help="also time bf16 + channels_last + compile (CUDA)")
    parser.add_argument("--markdown", help="also write the table to this file (it always goes to stderr)")
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    if args.augmenter:
        methods = ["kd", *[a for a in args.augmenter.split(",") if a]]
        if "tst" in methods:
            methods.append("tst_stage2")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    device = torch.device(args.device)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        num_classes = 100 if args.data_root and args.dataset == "cifar100" else 10
        teacher_ckpt = workdir / "teacher.pt"
        atomic_save(
            {
                "model": create(args.teacher, num_classes).state_dict(),
                "model_name": args.teacher,
                "num_classes": num_classes,
            },
            teacher_ckpt,
        )
        result: dict = {
            "device": str(device),
            "teacher": args.teacher,
            "student": args.student,
            "batch_size": args.batch_size,
            "steps": args.steps,
            "threads": torch.get_num_threads(),
            "reference_workers": args.workers,
        }
        result["reference_kd_images_per_sec"] = time_reference(args, device)
        result["compute_bound_images_per_sec"] = time_compute_bound(args, device, num_classes)
        rows: dict[str, dict[str, float]] = {}
        for method in methods:
            rate = time_trainer(args, method, teacher_ckpt, workdir, fast=False)
            row = {
                "images_per_sec": rate,
                "ratio": rate / result["reference_kd_images_per_sec"],
                "of_bound": rate / result["compute_bound_images_per_sec"],
            }
            if args.fast and device.type == "cuda":
                row["fast"] = time_trainer(args, method, teacher_ckpt, workdir, fast=True)
                row["fast_ratio"] = row["fast"] / result["reference_kd_images_per_sec"]
            rows[method] = row
            print(f"{method}: {rate:.0f} img/s", file=sys.stderr, flush=True)
        result["methods"] = rows
        # The headline numbers of the core issue's contract: CE and KD steps and KD against the reference.
        for method, key in (("ce", "ce_images_per_sec"), ("kd", "kd_images_per_sec")):
            if method in rows:
                result[key] = rows[method]["images_per_sec"]
        if "kd" in rows:
            result["ratio"] = rows["kd"]["ratio"]
            if "fast" in rows["kd"]:
                result["fast_kd_images_per_sec"] = rows["kd"]["fast"]
                result["fast_ratio"] = rows["kd"]["fast_ratio"]
    table = markdown(result, rows)
    print(table, file=sys.stderr)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
