"""Training throughput of every datakd method against a RepDistiller-style loop and the compute bound.

All measurements run in the same process on the same data, models and device, so the ratios are meaningful;
the reference loop, the compute bounds and datakd's KD step are timed *interleaved* (a few steps of each in
turn, for several rounds), so load from other processes on a shared machine hits them alike:

* datakd: the real trainer (`build_trainer` + `Trainer.train_step`) fed by the device-resident loader
  (uint8 split on the device, batched crop/flip/normalise), with the fast path a long run gets from
  `engine.compile/channels_last: auto` (channels_last + torch.compile of the student's and the teacher's
  forward, on the CPU through inductor's C++ backend; + bf16 autocast on CUDA) and, for comparison, eager
  (`eager_*`). Compile time is the warm-up's extra time over steady steps, reported separately
  (`compile_seconds`). Each method takes the loss, augmenter and target transform of its shipped CIFAR-100
  recipe for ResNet-56 → ResNet-20 (METHODS below); stage events are left out, so TST is timed in Stage III
  and EffDstl in each of its two stages.
* reference: what RepDistiller does: torchvision DataLoader over PIL images with per-sample
  RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize on worker processes, then a plain
  fp32 loop (teacher forward under no_grad, student forward, 0.1·CE + 0.9·KD, backward, SGD step).
* compute bound: the same teacher forward + student forward/backward/SGD step alone, on one synthetic
  batch that already sits on the device (no loader, no augmentation), with the same fast path as datakd:
  what KD could reach if the input pipeline and the method's bookkeeping were free. `of_bound` = method
  img/s ÷ this (`eager_of_bound` against the eager bound).

Data: CIFAR-100 when --data-root holds it, else the embedded Fashion-MNIST subset padded to 32×32 RGB
(CIFAR geometry; the throughput does not depend on the pixel values). Teachers are randomly initialised:
throughput does not depend on the weights either.

Prints one JSON object on stdout (`kd_images_per_sec` (fast path), `reference_kd_images_per_sec`,
`ratio` = KD ÷ reference, `compute_bound_images_per_sec`, `compile_seconds`, `eager_kd_images_per_sec`,
and `methods` with every method's img/s and ratios) and a markdown table on stderr.

    python benchmarks/throughput.py                                         # KD vs reference, CPU
    python benchmarks/throughput.py --methods all --steps 10                # every method
    python benchmarks/throughput.py --device cuda --steps 50 --methods all  # + bf16 on CUDA
    python benchmarks/throughput.py --methods kd,tlcutmix,tlcutmix_pick     # a subset
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common
from datakd.checkpoint import atomic_save
from datakd.config import config_from_dict
from datakd.engine.build import build_trainer
from datakd.engine.fastpath import resolve_fast_path
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


def fast_channels_last(args: argparse.Namespace) -> bool:
    """The fast path's memory format: what `engine.channels_last: auto` picks for a long run on this device,
    unless --channels-last says otherwise (to time both formats)."""
    if args.channels_last != "auto":
        return args.channels_last == "true"
    return resolve_fast_path("auto", "auto", torch.device(args.device), 10**9).channels_last


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


# A stepper runs one training step per next() and yields the number of images it trained on.
Stepper = Iterator[int]


def trainer_stepper(
    args: argparse.Namespace,
    method: str,
    teacher_ckpt: Path,
    workdir: Path,
    fast: bool,
    compile: bool | None = None,
) -> Stepper:
    """datakd's trainer on `method`, eager or with the fast path a long run gets from `auto` (`compile`
    False keeps bf16/channels_last but skips compiling)."""
    mode = "train" if method == "ce" else "distill"
    device = torch.device(args.device)
    values = {
        "name": f"bench-{method}",
        "device": args.device,
        "out": str(workdir / f"{method}-{fast}-{compile}-{time.monotonic_ns()}"),
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
            "amp": fast and device.type == "cuda",
            "channels_last": fast and fast_channels_last(args),
            "compile": fast and not args.no_compile if compile is None else compile,
        },
    }
    if mode == "distill":
        values["teacher"] = {"name": args.teacher, "checkpoint": str(teacher_ckpt)}
    trainer = build_trainer(config_from_dict(values), mode)
    trainer.student.train()
    if method == "tst_stage2":
        yield from tst_search_stepper(trainer, args)
        return
    epoch = 0
    while True:
        for batch in trainer.loader.epoch(epoch):
            trainer.train_step(batch)
            sync(trainer.device)
            yield len(batch)
        epoch += 1


def tst_search_stepper(trainer, args: argparse.Namespace) -> Stepper:
    """TST Stage II: one step of the tst_search event's search (θ_p/θ_m updated, models frozen) per next()."""
    stage_two = TSTSearch()
    call = 0
    while True:
        stage_two.search(trainer, call, 1, max_steps=1)
        sync(trainer.device)
        call += 1
        yield args.batch_size


def bound_stepper(
    args: argparse.Namespace, device: torch.device, num_classes: int, fast: bool, compile: bool | None = None
) -> Stepper:
    """Teacher forward + student forward/backward/step on one resident synthetic batch: KD's ceiling, with
    the same channels_last / compile / bf16 as datakd's fast path when `fast`."""
    teacher = create(args.teacher, num_classes).to(device).eval().requires_grad_(False)
    student = create(args.student, num_classes).to(device).train()
    x = torch.randn(args.batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, num_classes, (args.batch_size,), device=device)
    if fast and fast_channels_last(args):
        teacher = teacher.to(memory_format=torch.channels_last)
        student = student.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    do_compile = fast and not args.no_compile if compile is None else compile
    t_fwd, s_fwd = (torch.compile(teacher), torch.compile(student)) if do_compile else (teacher, student)
    amp = fast and device.type == "cuda"
    while True:
        with torch.autocast(device.type, torch.bfloat16, enabled=amp):
            with torch.no_grad():
                t_logits = t_fwd(x)
            s_logits = s_fwd(x)
        s_logits, t_logits = s_logits.float(), t_logits.float()
        loss = 0.1 * F.cross_entropy(s_logits, y) + 0.9 * LF.kd(s_logits, t_logits, 4.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(device)
        yield args.batch_size


def reference_stepper(args: argparse.Namespace, device: torch.device) -> Stepper:
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
    while True:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.no_grad():
                t_logits = teacher(x)
            s_logits = student(x)
            loss = 0.1 * F.cross_entropy(s_logits, y) + 0.9 * LF.kd(s_logits, t_logits, 4.0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            sync(device)
            yield len(y)


def interleaved(
    steppers: dict[str, Callable[[], Stepper]], warmup: int, steps: int, rounds: int
) -> dict[str, dict[str, float]]:
    """Warm each stepper up (`warmup` steps, compile included), then time `steps` steps of each, taken in
    `rounds` turns of steps/rounds so that every stepper sees the same machine load. Returns img/s, the
    steady seconds per step and the warm-up's extra seconds over steady steps (≈ compile time)."""
    live, warm = {}, {}
    for name, make in steppers.items():
        start = time.perf_counter()
        live[name] = make()
        for _ in range(warmup):
            next(live[name])
        warm[name] = time.perf_counter() - start
    seconds = dict.fromkeys(steppers, 0.0)
    images = dict.fromkeys(steppers, 0)
    per_round = max(1, steps // rounds)
    for _ in range(rounds):
        for name, it in live.items():
            start = time.perf_counter()
            for _ in range(per_round):
                images[name] += next(it)
            seconds[name] += time.perf_counter() - start
    result = {}
    for name in steppers:
        step_seconds = seconds[name] / (per_round * rounds)
        result[name] = {
            "images_per_sec": images[name] / seconds[name],
            "step_seconds": step_seconds,
            "warmup_extra_seconds": max(0.0, warm[name] - warmup * step_seconds),
        }
        live[name].close()
    return result


def markdown(result: dict, rows: dict[str, dict[str, float]]) -> str:
    lines = [
        f"{result['teacher']} → {result['student']}, batch {result['batch_size']}, {result['device']}, "
        f"{result['threads']} torch threads, {result['steps']} timed steps each in {result['rounds']} "
        f"interleaved rounds; reference KD loop {result['reference_kd_images_per_sec']:.0f} img/s, compute "
        f"bound {result['compute_bound_images_per_sec']:.0f} img/s (eager "
        f"{result['eager_compute_bound_images_per_sec']:.0f})",
        "",
        "| method | fast img/s | × reference KD loop | of compute bound | compile s | eager img/s "
        "| eager × reference |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        fast = (
            f"{row['images_per_sec']:.0f} | {row['ratio']:.2f} | {row['of_bound']:.2f} | "
            f"{row['compile_seconds']:.0f}"
            if "images_per_sec" in row
            else "– | – | – | –"
        )
        eager = (
            f"{row['eager_images_per_sec']:.0f} | {row['eager_ratio']:.2f}"
            if "eager_images_per_sec" in row
            else "– | –"
        )
        lines.append(f"| {name} | {fast} | {eager} |")
    return "\n".join(lines)


def method_row(fast: dict | None, eager: dict | None, result: dict) -> dict[str, float]:
    ref = result["reference_kd_images_per_sec"]
    row: dict[str, float] = {}
    if fast is not None:
        row["images_per_sec"] = fast["images_per_sec"]
        row["ratio"] = fast["images_per_sec"] / ref
        row["of_bound"] = fast["images_per_sec"] / result["compute_bound_images_per_sec"]
        row["compile_seconds"] = fast["warmup_extra_seconds"]
    if eager is not None:
        row["eager_images_per_sec"] = eager["images_per_sec"]
        row["eager_ratio"] = eager["images_per_sec"] / ref
        row["eager_of_bound"] = eager["images_per_sec"] / result["eager_compute_bound_images_per_sec"]
    return row


def build_parser() -> argparse.ArgumentParser:
    """The options, also read by benchmarks/gpu.py: its steppers take this namespace, so a new option here
    gets its default there instead of an AttributeError on the GPU machine."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher", default="resnet56")
    parser.add_argument("--student", default="resnet20")
    parser.add_argument(
        "--methods", default="kd", help=f"'all' or a subset of {', '.join(METHODS)} (KD is always timed)"
    )
    parser.add_argument(
        "--augmenter",
        help="time KD and KD with each of these augmenters only (e.g. tlcutmix,tlcutmix_pick or tst)",
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=24, help="timed steps per measurement")
    parser.add_argument(
        "--rounds", type=int, default=4, help="interleaved rounds the timed steps are split in"
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (they include compiling)")
    parser.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="DataLoader workers of the reference loop",
    )
    parser.add_argument("--dataset", default="cifar100")
    parser.add_argument("--data-root", help="folder with CIFAR (default: embedded data at CIFAR geometry)")
    parser.add_argument("--no-fast", action="store_true", help="skip the fast path (compile/channels_last)")
    parser.add_argument("--no-eager", action="store_true", help="skip the eager trainer")
    parser.add_argument(
        "--channels-last",
        choices=("auto", "true", "false"),
        default="auto",
        help="the fast path's memory format (default: what engine.channels_last: auto picks)",
    )
    parser.add_argument(
        "--no-compile", action="store_true", help="fast path without torch.compile (channels_last/bf16 only)"
    )
    parser.add_argument("--markdown", help="also write the table to this file (it always goes to stderr)")
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.no_fast and args.no_eager:
        parser.error("--no-fast and --no-eager leave nothing to time")
    methods = list(METHODS) if args.methods == "all" else [m for m in args.methods.split(",") if m]
    if args.augmenter:
        methods = ["kd", *[a for a in args.augmenter.split(",") if a]]
        if "tst" in methods:
            methods.append("tst_stage2")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; choose from all, {', '.join(METHODS)}")
    methods = ["kd", *[m for m in methods if m != "kd"]]
    device = torch.device(args.device)
    torch.manual_seed(0)
    modes = [m for m, skip in (("fast", args.no_fast), ("eager", args.no_eager)) if not skip]
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
            "rounds": args.rounds,
            "threads": torch.get_num_threads(),
            "reference_workers": args.workers,
            "torch": torch.__version__,
            "fast_channels_last": fast_channels_last(args),
            "fast_compile": not args.no_compile,
        }

        def trainer_for(method: str, fast: bool) -> Callable[[], Stepper]:
            return lambda: trainer_stepper(args, method, teacher_ckpt, workdir, fast)

        # The headline: reference loop, compute bounds and KD, interleaved.
        headline = {"reference": lambda: reference_stepper(args, device)}
        for mode in modes:
            fast = mode == "fast"
            headline[f"bound_{mode}"] = lambda fast=fast: bound_stepper(args, device, num_classes, fast)
            headline[f"kd_{mode}"] = trainer_for("kd", fast)
        timed = interleaved(headline, args.warmup, args.steps, args.rounds)
        result["reference_kd_images_per_sec"] = timed["reference"]["images_per_sec"]
        for mode in modes:
            prefix = "" if mode == modes[0] else "eager_"
            result[f"{prefix}compute_bound_images_per_sec"] = timed[f"bound_{mode}"]["images_per_sec"]
        if "eager" in modes and "fast" in modes:
            result["eager_compute_bound_images_per_sec"] = timed["bound_eager"]["images_per_sec"]
        else:  # one mode only: the table's eager bound is that mode's bound
            result["eager_compute_bound_images_per_sec"] = result["compute_bound_images_per_sec"]
        rows: dict[str, dict[str, float]] = {
            "kd": method_row(timed.get("kd_fast"), timed.get("kd_eager"), result)
        }
        print(f"kd: {rows['kd']}", file=sys.stderr, flush=True)
        for method in methods[1:]:
            pair = {mode: trainer_for(method, mode == "fast") for mode in modes}
            try:
                timed_method = interleaved(pair, args.warmup, args.steps, args.rounds)
            except Exception as exc:
                rows[method] = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"{method}: failed: {exc}", file=sys.stderr, flush=True)
                continue
            rows[method] = method_row(timed_method.get("fast"), timed_method.get("eager"), result)
            print(f"{method}: {rows[method]}", file=sys.stderr, flush=True)
        result["methods"] = rows
        kd = rows["kd"]
        main_key = "images_per_sec" if "fast" in modes else "eager_images_per_sec"
        result["kd_images_per_sec"] = kd[main_key]
        result["ratio"] = kd[main_key] / result["reference_kd_images_per_sec"]
        if "fast" in modes:
            result["compile_seconds"] = kd["compile_seconds"]
        if "eager" in modes:
            result["eager_kd_images_per_sec"] = kd["eager_images_per_sec"]
            result["eager_ratio"] = kd["eager_ratio"]
        if "ce" in rows and main_key in rows["ce"]:
            result["ce_images_per_sec"] = rows["ce"][main_key]
    table = markdown(result, {k: v for k, v in rows.items() if "error" not in v})
    print(table, file=sys.stderr)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
