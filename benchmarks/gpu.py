"""One-call GPU benchmark: KD with bf16 + channels_last + compile against the reference loop and the compute
bound, every method, pick's overhead over TLCutMix, and the data path alone; one JSON file out.

Runs from the repository root without installing datakd (`PYTHONPATH=.`), on synthetic CIFAR-shaped data
(the embedded Fashion-MNIST subset padded to 32×32 RGB; throughput does not depend on the pixels) and
randomly initialised ResNet-56 → ResNet-20. Every section is wrapped so that a failure is recorded in the
JSON (`errors`) and the rest still runs; sections that would overrun `--budget` seconds are skipped and
listed under `skipped`. The JSON is rewritten after every section, so even a killed run leaves its results.

    bash benchmarks/gpu.sh OUTDIR                         # what the lead runs on the GPU machine
    PYTHONPATH=. python3 benchmarks/gpu.py --device cpu --tiny --out /tmp/gpu.json   # a CPU smoke run

Sections (all timings of one process, steady state after warm-up):
* headline: reference loop (RepDistiller-style, PIL on DataLoader workers, fp32), compute bound
  (bf16 + channels_last + compile on one resident batch) and datakd KD (bf16 + channels_last + compile),
  interleaved; compile time reported separately;
* methods: every method of benchmarks/throughput.py with bf16 + channels_last, not compiled (compiling
  21 step variants would not fit the time); `kd` is also here for comparison;
* pick: TLCutMix and TLCutMix+pick interleaved, pick's extra time per image;
* data: the device-resident loader alone against the reference DataLoader alone (batches moved to the GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _ensure_tqdm() -> None:
    """The GPU machine may lack tqdm (datakd imports it for progress bars, all disabled here)."""
    try:
        import tqdm  # noqa: F401
    except ImportError:
        import types

        class _Bar:
            def __init__(self, iterable: Any = None, *args: Any, **kwargs: Any) -> None:
                self.iterable = iterable

            def __iter__(self):
                return iter(self.iterable if self.iterable is not None else [])

            def update(self, n: int = 1) -> None:
                pass

            def close(self) -> None:
                pass

            @staticmethod
            def write(text: str, *args: Any, **kwargs: Any) -> None:
                print(text, file=sys.stderr)

        import importlib.machinery

        module = types.ModuleType("tqdm")
        module.__spec__ = importlib.machinery.ModuleSpec("tqdm", None)
        module.tqdm = _Bar  # type: ignore[attr-defined]
        sys.modules["tqdm"] = module


_ensure_tqdm()

from benchmarks import common  # noqa: E402
from benchmarks import throughput as tp  # noqa: E402
from datakd.checkpoint import atomic_save  # noqa: E402
from datakd.models import create  # noqa: E402


class Report:
    """The JSON document, written after every section so nothing finished is lost."""

    def __init__(self, path: Path, budget: float) -> None:
        self.path = path
        self.start = time.perf_counter()
        self.budget = budget
        self.data: dict[str, Any] = {"errors": {}, "skipped": [], "sections_seconds": {}}
        self.write()

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.start)

    def write(self) -> None:
        self.data["wall_seconds"] = time.perf_counter() - self.start
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        os.replace(tmp, self.path)

    def section(self, name: str, needs: float, fn, *args: Any) -> Any:
        """Run one section if at least `needs` seconds of the budget are left; record errors."""
        if self.left() < needs:
            self.data["skipped"].append(f"{name} (needs ~{needs:.0f} s, {max(self.left(), 0):.0f} s left)")
            self.write()
            return None
        start = time.perf_counter()
        try:
            return fn(*args)
        except Exception as exc:
            self.data["errors"][name] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}"
            return None
        finally:
            self.data["sections_seconds"][name] = time.perf_counter() - start
            self.write()


def environment(device: torch.device) -> dict[str, Any]:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:  # pragma: no cover - torchvision is a dependency
        pass
    return info


def headline(args, ns, teacher_ckpt: Path, workdir: Path, device: torch.device, num_classes: int) -> dict:
    steppers = {
        "reference": lambda: tp.reference_stepper(ns, device),
        "bound": lambda: tp.bound_stepper(ns, device, num_classes, True, compile=ns.compile),
        "kd": lambda: tp.trainer_stepper(ns, "kd", teacher_ckpt, workdir, True, compile=ns.compile),
    }
    timed = tp.interleaved(steppers, args.warmup, args.steps, args.rounds)
    ref, bound, kd = (timed[k]["images_per_sec"] for k in ("reference", "bound", "kd"))
    return {
        "reference_kd_images_per_sec": ref,
        "compute_bound_images_per_sec": bound,
        "kd_images_per_sec": kd,
        "kd_x_reference": kd / ref,
        "kd_of_bound": kd / bound,
        "kd_compile_seconds": timed["kd"]["warmup_extra_seconds"],
        "bound_compile_seconds": timed["bound"]["warmup_extra_seconds"],
        "goal": "KD >= 3x reference and >= 0.70 of the compute bound",
    }


def methods(args, ns, teacher_ckpt: Path, workdir: Path, report: Report, per_method: float) -> dict:
    rows: dict[str, Any] = {}
    names = list(tp.METHODS) if args.methods == "all" else args.methods.split(",")
    for name in names:
        if report.left() < per_method:
            report.data["skipped"].append(f"method {name} (time budget)")
            continue
        try:
            timed = tp.interleaved(
                {
                    name: lambda name=name: tp.trainer_stepper(
                        ns, name, teacher_ckpt, workdir, True, compile=False
                    )
                },
                args.method_warmup,
                args.method_steps,
                1,
            )
            rows[name] = {"images_per_sec": timed[name]["images_per_sec"]}
        except Exception as exc:
            rows[name] = {"error": f"{type(exc).__name__}: {exc}"}
        report.data["methods"] = rows
        report.write()
    return rows


def pick(args, ns, teacher_ckpt: Path, workdir: Path) -> dict:
    pair = {
        name: (lambda name=name: tp.trainer_stepper(ns, name, teacher_ckpt, workdir, True, compile=False))
        for name in ("tlcutmix", "tlcutmix_pick")
    }
    timed = tp.interleaved(pair, args.method_warmup, args.method_steps, args.rounds)
    base, picked = timed["tlcutmix"]["images_per_sec"], timed["tlcutmix_pick"]["images_per_sec"]
    return {
        "tlcutmix_images_per_sec": base,
        "tlcutmix_pick_images_per_sec": picked,
        "pick_extra_time": base / picked - 1.0,
        "goal": "pick_extra_time <= 0.25",
    }


def data_path(args, ns, device: torch.device) -> dict:
    from datakd.config import DataConfig
    from datakd.data.build import load_dataset, make_normalizer, train_loader

    cfg = DataConfig(**tp.data_section(ns))
    bundle, _ = load_dataset(cfg, seed=0)
    loader = train_loader(cfg, bundle, make_normalizer(bundle, device, True), device, seed=0)
    reference = common.reference_loader(
        bundle.train.images,
        bundle.train.labels,
        bundle.mean,
        bundle.std,
        ns.batch_size,
        ns.workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
    )

    def ours():
        epoch = 0
        while True:
            for batch in loader.epoch(epoch):
                tp.sync(device)
                yield len(batch)
            epoch += 1

    def theirs():
        while True:
            for x, y in reference:
                x = x.to(device, non_blocking=True)
                tp.sync(device)
                yield len(y)

    timed = tp.interleaved({"device_loader": ours, "reference": theirs}, 3, args.data_batches, args.rounds)
    a, b = timed["device_loader"]["images_per_sec"], timed["reference"]["images_per_sec"]
    return {"device_loader_images_per_sec": a, "reference_loader_images_per_sec": b, "ratio": a / b}


def table(data: dict) -> str:
    data = {"errors": {}, "skipped": [], **data}
    lines = [
        "datakd GPU benchmark ("
        + str(data.get("environment", {}).get("gpu", data.get("environment", {}).get("device")))
        + ")"
    ]
    h = data.get("headline")
    if h:
        lines.append(
            f"KD {data.get('setup', {}).get('fast_path', '')} {h['kd_images_per_sec']:.0f} img/s | reference "
            f"{h['reference_kd_images_per_sec']:.0f} ({h['kd_x_reference']:.2f}x) | bound "
            f"{h['compute_bound_images_per_sec']:.0f} ({h['kd_of_bound']:.0%}) | compile "
            f"{h['kd_compile_seconds']:.0f} s"
        )
    p = data.get("pick")
    if p:
        lines.append(f"pick over TLCutMix: {p['pick_extra_time']:+.0%} time per image")
    d = data.get("data")
    if d:
        lines.append(
            f"data path: device loader {d['device_loader_images_per_sec']:.0f} img/s, reference "
            f"{d['reference_loader_images_per_sec']:.0f} ({d['ratio']:.1f}x)"
        )
    for name, row in (data.get("methods") or {}).items():
        value = f"{row['images_per_sec']:.0f} img/s" if "images_per_sec" in row else row.get("error", "")[:60]
        lines.append(f"  {name:<15} {value}")
    if data["errors"]:
        lines.append(f"errors in: {', '.join(data['errors'])}")
    if data["skipped"]:
        lines.append(f"skipped: {len(data['skipped'])} (see JSON)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", help="the JSON file to write")
    parser.add_argument("--table", help="only print the table of an existing JSON file (e.g. a killed run)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--budget", type=float, default=150.0, help="seconds; later sections are skipped past it"
    )
    parser.add_argument("--tiny", action="store_true", help="a few steps of small models (CPU smoke run)")
    parser.add_argument("--methods", default="all")
    parser.add_argument("--no-compile", action="store_true", help="headline without torch.compile")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return
    if not args.out:
        parser.error("--out FILE is required")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available here; use --device cpu --tiny for a smoke run")
    if args.tiny:
        args.steps, args.rounds, args.warmup, args.method_steps, args.method_warmup, args.data_batches = (
            2,
            1,
            1,
            1,
            1,
            2,
        )
        models = ["--teacher", "resnet8", "--student", "resnet8", "--batch-size", "16", "--workers", "0"]
    else:
        args.steps, args.rounds, args.warmup, args.method_steps, args.method_warmup, args.data_batches = (
            60,
            3,
            3,
            20,
            3,
            60,
        )
        models = ["--teacher", "resnet56", "--student", "resnet20", "--batch-size", "128"]
        models += ["--workers", str(min(8, os.cpu_count() or 1))]
    # throughput.py's own options with their defaults (channels_last: auto, ...), then this benchmark's.
    ns = tp.build_parser().parse_args(models)
    ns.device, ns.dataset, ns.data_root = args.device, "cifar100", None
    ns.compile = not args.no_compile
    fast_path = (
        ("bf16+" if device.type == "cuda" else "") + "channels_last" + ("+compile" if ns.compile else "")
    )
    torch.backends.cudnn.benchmark = True
    report = Report(Path(args.out), args.budget)
    report.data["environment"] = environment(device)
    report.data["setup"] = {
        "teacher": ns.teacher,
        "student": ns.student,
        "batch_size": ns.batch_size,
        "reference_workers": ns.workers,
        "steps": args.steps,
        "rounds": args.rounds,
        "data": "embedded Fashion-MNIST subset at 32x32 RGB (synthetic CIFAR shape)",
        "command": " ".join(sys.argv),
        "fast_path": fast_path,
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        num_classes = 10
        teacher_ckpt = workdir / "teacher.pt"
        atomic_save(
            {
                "model": create(ns.teacher, num_classes).state_dict(),
                "model_name": ns.teacher,
                "num_classes": num_classes,
            },
            teacher_ckpt,
        )
        report.data["headline"] = report.section(
            "headline",
            30 if args.tiny else 90,
            headline,
            args,
            ns,
            teacher_ckpt,
            workdir,
            device,
            num_classes,
        )
        report.data["data"] = report.section("data", 5 if args.tiny else 15, data_path, args, ns, device)
        report.data["pick"] = report.section(
            "pick", 5 if args.tiny else 20, pick, args, ns, teacher_ckpt, workdir
        )
        report.section("methods", 5, methods, args, ns, teacher_ckpt, workdir, report, 2 if args.tiny else 6)
    report.write()
    print(table(report.data))


if __name__ == "__main__":
    main()
