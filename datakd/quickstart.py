"""The quick-start protocol: teacher, then a student with CE and with KD, on real Fashion-MNIST data.

By default it uses the subset embedded in the package (6,000 train / 2,000 test images), so it needs no
download, and the teacher shipped in the package (trained by scripts/train_quickstart_teacher.py with this
protocol's teacher stage, seed 0; its SHA-256 is checked), so only the two students train: minutes on a
2-core CPU. `train_teacher=True` (`--train-teacher`) trains the teacher too, as does `data_root` (the full
IDX files found there) or an `epochs` override.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from datakd.checkpoint import atomic_write_text
from datakd.config import config_from_dict
from datakd.engine.build import build_trainer
from datakd.errors import DatakdError

TEACHER_MODEL = "resnet20"
STUDENT_MODEL = "resnet8"
# The shipped teacher: written by scripts/train_quickstart_teacher.py (the `teacher` stage below, seed 0).
TEACHER_WEIGHTS = "quickstart_teacher_resnet20.pt"
TEACHER_SHA256 = "fa25db6454ac46261c6061929923d4a21e8ebe2c304887ab06686c44085da623"

BASE: dict[str, Any] = {
    "data": {
        "dataset": "quickstart",
        "batch_size": 128,
        "eval_batch_size": 500,
        "augment": "crop_flip",
        "crop_padding": 2,
    },
    "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
    "schedule": {"name": "cosine", "warmup_epochs": 1, "warmup_start_factor": 0.1},
    "engine": {"save_best": False},
}

PROTOCOL: dict[str, dict[str, Any]] = {
    "teacher": {
        "student": {"name": TEACHER_MODEL, "kwargs": {"in_channels": 1}},
        "epochs": 15,
        "loss": {"ce": {"weight": 1.0}},
    },
    # Students get a shorter budget than the teacher: the regime where soft targets help most visibly (with
    # 15 epochs both students reach about 86 % and KD's edge is within the noise of 2,000 test images).
    "student_ce": {
        "student": {"name": STUDENT_MODEL, "kwargs": {"in_channels": 1}},
        "epochs": 6,
        "loss": {"ce": {"weight": 1.0}},
    },
    "student_kd": {
        "student": {"name": STUDENT_MODEL, "kwargs": {"in_channels": 1}},
        "epochs": 6,
        "loss": {"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "temperature": 4.0}},
    },
}


def stage_config(
    stage: str, out: Path, seed: int, device: str, data_root: str | None, epochs: int | None, quiet: bool
) -> dict[str, Any]:
    values = copy.deepcopy(BASE)
    values.update(copy.deepcopy(PROTOCOL[stage]))
    values.update(
        {
            "name": f"quickstart-{stage}",
            "seed": seed,
            "device": device,
            "out": str(out / stage),
            "quiet": quiet,
        }
    )
    if epochs is not None:
        values["epochs"] = epochs
    if data_root is not None:
        values["data"].update(
            {"dataset": "fashion-mnist", "root": data_root, "options": {"pad_to_32": False, "rgb": False}}
        )
    if stage == "student_kd":
        values["teacher"] = {"checkpoint": str(out / "teacher" / "last.pt")}
    return values


def shipped_teacher() -> Path:
    """The packaged teacher's path, after checking its SHA-256 against the recorded one."""
    import hashlib
    from importlib import resources

    path = Path(str(resources.files("datakd.data.embedded").joinpath(TEACHER_WEIGHTS)))
    if not path.exists():
        raise DatakdError(f"the quick-start teacher {str(path)!r} is missing; run with --train-teacher")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != TEACHER_SHA256:
        raise DatakdError(
            f"the quick-start teacher {str(path)!r} has SHA-256 {digest}, expected {TEACHER_SHA256}; "
            "reinstall datakd or run with --train-teacher"
        )
    return path


def evaluate_shipped_teacher(out: Path, device: str, quiet: bool) -> dict[str, Any]:
    """Put the shipped teacher where the KD stage looks for it and measure it on the test split."""
    import shutil
    import time

    from datakd.config import DataConfig
    from datakd.data.build import eval_loader, load_dataset, make_normalizer
    from datakd.engine.build import resolve_device
    from datakd.engine.evaluate import evaluate
    from datakd.models.loading import load_model

    started = time.perf_counter()
    target = out / "teacher" / "last.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shipped_teacher(), target)
    cfg = DataConfig(**{k: v for k, v in BASE["data"].items() if k != "batch_size"})
    torch_device = resolve_device(device)
    bundle, _ = load_dataset(cfg, seed=0)
    model, _ = load_model(target, bundle.num_classes)
    loader = eval_loader(cfg, bundle, make_normalizer(bundle, torch_device), torch_device)
    result = evaluate(model.to(torch_device), loader, progress=not quiet, desc="teacher eval")
    return {
        "top1_last": result["top1"],
        "top1_best": result["top1"],
        "top5_last": result["top5"],
        "epochs": PROTOCOL["teacher"]["epochs"],
        "images_per_sec": None,
        "wall_seconds": time.perf_counter() - started,
        "shipped": True,
    }


def train_teacher(out: Path, seed: int = 0, device: str = "auto", quiet: bool = False) -> dict[str, Any]:
    """The protocol's teacher stage, trained into `out` (what the shipped weights come from)."""
    values = stage_config("teacher", out.parent, seed, device, None, None, quiet)
    values["out"] = str(out)
    return build_trainer(config_from_dict(values), "train").fit()


def export_teacher(checkpoint: Path, target: Path) -> str:
    """Keep only what a teacher needs (weights, architecture, classes) and return the file's SHA-256."""
    import hashlib

    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    slim = {k: state[k] for k in ("model", "model_name", "model_kwargs", "num_classes", "dataset")}
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(slim, target)
    return hashlib.sha256(target.read_bytes()).hexdigest()


def run_quickstart(
    out: Path,
    seed: int = 0,
    device: str = "auto",
    data_root: str | None = None,
    epochs: int | None = None,
    quiet: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    train_teacher: bool = False,
) -> dict[str, Any]:
    """Run the three stages into `out`; `resume` skips finished stages and continues (or starts) the rest.

    The teacher stage evaluates the teacher shipped in the package unless `train_teacher` is set or other
    data or epochs make the shipped one the wrong teacher."""
    use_shipped = not train_teacher and data_root is None and epochs is None
    results: dict[str, Any] = {
        "dataset": "fashion-mnist"
        if data_root
        else "quickstart (embedded Fashion-MNIST subset: 6,000 train / 2,000 test)",
        "seed": seed,
    }
    for stage in PROTOCOL:
        cfg = config_from_dict(stage_config(stage, out, seed, device, data_root, epochs, quiet))
        mode = "distill" if stage == "student_kd" else "train"
        stage_dir = out / stage
        done = stage_dir / "summary.json"
        if resume and done.exists():
            summary = json.loads(done.read_text())
        elif stage == "teacher" and use_shipped:
            summary = evaluate_shipped_teacher(out, device, quiet)
            atomic_write_text(json.dumps(summary, indent=2) + "\n", done)
        else:
            trainer = build_trainer(cfg, mode, resume="auto" if resume else False, overwrite=overwrite)
            summary = trainer.fit()
        results[stage] = {
            "model": cfg.student.name,
            "top1": summary["top1_last"],
            "top1_best": summary["top1_best"],
            "top5": summary["top5_last"],
            "epochs": summary["epochs"],
            "images_per_sec": summary["images_per_sec"],
            "wall_seconds": summary["wall_seconds"],
            "trained": not summary.get("shipped", False),
        }
    atomic_write_text(json.dumps(results, indent=2) + "\n", out / "results.json")
    return results


def format_table(results: dict[str, Any]) -> str:
    lines = [
        "| run | model | top-1 last (%) | top-1 best (%) | img/s | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for stage in PROTOCOL:
        r = results[stage]
        speed = "shipped" if r["images_per_sec"] is None else f"{r['images_per_sec']:.0f}"
        lines.append(
            f"| {stage} | {r['model']} | {r['top1']:.2f} | {r['top1_best']:.2f} | "
            f"{speed} | {r['wall_seconds']:.0f} |"
        )
    return "\n".join(lines)
