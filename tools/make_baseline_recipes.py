"""Write the CIFAR-100 logit-baseline recipes (KD, DKD, DIST) for the standard RepDistiller pairs.

Usage: python tools/make_baseline_recipes.py [--out recipes/cifar100/baselines] [--check]
Every recipe is the RepDistiller protocol (batch 64, SGD momentum 0.9, wd 5e-4, 240 epochs, ×0.1 at
150/180/210, crop+flip) with lr 0.05, or 0.01 for MobileNetV2/ShuffleNet students. Numbers under
`reference:` are the published top-1 for that pair; a pair a paper does not report has no reference.
`--check` exits non-zero when the committed files differ from what this script writes (used by the tests).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

OUT = Path(__file__).resolve().parents[1] / "recipes" / "cifar100" / "baselines"

# Teacher checkpoint folders of RepDistiller's `save/models/` (the files mdistiller re-hosts).
TEACHER_DIRS = {
    "resnet56": "resnet56_vanilla",
    "resnet110": "resnet110_vanilla",
    "resnet32x4": "resnet32x4_vanilla",
    "wrn_40_2": "wrn_40_2_vanilla",
    "vgg13": "vgg13_vanilla",
    "resnet50": "ResNet50_vanilla",
}
PRETTY = {
    "resnet56": "ResNet-56",
    "resnet20": "ResNet-20",
    "resnet110": "ResNet-110",
    "resnet32": "ResNet-32",
    "resnet32x4": "ResNet-32x4",
    "resnet8x4": "ResNet-8x4",
    "wrn_40_2": "WRN-40-2",
    "wrn_16_2": "WRN-16-2",
    "wrn_40_1": "WRN-40-1",
    "vgg13": "VGG-13",
    "vgg8": "VGG-8",
    "mobilenetv2": "MobileNet-V2",
    "resnet50": "ResNet-50",
    "shufflev1": "ShuffleNet-V1",
    "shufflev2": "ShuffleNet-V2",
}
SMALL_LR_STUDENTS = ("mobilenetv2", "shufflev1", "shufflev2")

DKD_PAPER = "DKD: Decoupled Knowledge Distillation (Zhao et al., CVPR 2022)"
DIST_PAPER = "DIST: Knowledge Distillation from A Stronger Teacher (Huang et al., NeurIPS 2022)"
SAME = "CIFAR-100, teacher and student of the same architecture family"
DIFFERENT = "CIFAR-100, teacher and student of different architectures"


@dataclass(frozen=True)
class Pair:
    teacher: str
    student: str
    dkd_beta: float  # mdistiller configs/cifar100/dkd/<pair>.yaml DKD.BETA (default 8.0 where unset)
    kd_top1: float  # KD row of the DKD paper's CIFAR-100 tables (numbers from CRD)
    dkd_top1: float  # DKD row of the same tables
    dist_top1: float | None = None  # DIST authors' CIFAR-100 table (hunto/DIST_KD README), mean of runs
    dist_std: float | None = None

    @property
    def same_family(self) -> bool:
        return self.student not in SMALL_LR_STUDENTS

    @property
    def lr(self) -> float:
        return 0.01 if self.student in SMALL_LR_STUDENTS else 0.05

    @property
    def row(self) -> str:
        return f"{PRETTY[self.teacher]} -> {PRETTY[self.student]}"


PAIRS = (
    Pair("resnet56", "resnet20", 2.0, 70.66, 71.97, 71.75, 0.30),
    Pair("resnet110", "resnet32", 2.0, 73.08, 74.11),
    Pair("resnet32x4", "resnet8x4", 8.0, 73.33, 76.32, 76.31, 0.19),
    Pair("wrn_40_2", "wrn_16_2", 6.0, 74.92, 76.24),
    Pair("wrn_40_2", "wrn_40_1", 6.0, 73.54, 74.81, 74.43, 0.24),
    Pair("vgg13", "vgg8", 6.0, 72.98, 74.68),
    Pair("vgg13", "mobilenetv2", 6.0, 67.37, 69.71),
    Pair("resnet50", "mobilenetv2", 8.0, 67.35, 70.35, 68.66, 0.23),
    Pair("resnet32x4", "shufflev1", 8.0, 74.07, 76.45, 76.34, 0.18),
    Pair("resnet32x4", "shufflev2", 8.0, 74.45, 77.07, 77.35, 0.25),
    Pair("wrn_40_2", "shufflev1", 8.0, 74.83, 76.70),
)


def loss_spec(method: str, pair: Pair) -> dict[str, Any]:
    if method == "kd":
        # RepDistiller/CRD's KD baseline: 0.1·CE + 0.9·KD at τ = 4 (the KD numbers of the DKD tables).
        return {"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "temperature": 4.0}}
    if method == "dkd":
        # mdistiller: CE weight 1, α = 1, per-pair β, τ = 4, 20-epoch linear warm-up of the DKD loss.
        return {
            "ce": {"weight": 1.0},
            "dkd": {
                "weight": 1.0,
                "alpha": 1.0,
                "beta": pair.dkd_beta,
                "temperature": 4.0,
                "warmup_epochs": 20.0,
                "warmup_mode": "epoch",
            },
        }
    if method == "dist":
        # Authors' ImageNet configs: ori_loss_weight 1, kd_loss_weight 2 on DIST(β = γ = 1); their CIFAR
        # config is not public in the index we could read, τ = 4 follows their `dist_t4` CIFAR runs
        # (see docs/methods/baselines-logit.md, "Deviations and open points").
        return {"ce": {"weight": 1.0}, "dist": {"weight": 2.0, "beta": 1.0, "gamma": 1.0, "temperature": 4.0}}
    raise ValueError(f"unknown method {method!r}")


def reference(method: str, pair: Pair) -> dict[str, Any] | None:
    table = SAME if pair.same_family else DIFFERENT
    if method == "kd":
        return {
            "paper": DKD_PAPER,
            "table": table,
            "row": f"{pair.row}, KD",
            "top1": pair.kd_top1,
            "note": "KD baseline as reported in the DKD tables (originally from CRD)",
        }
    if method == "dkd":
        return {"paper": DKD_PAPER, "table": table, "row": f"{pair.row}, DKD", "top1": pair.dkd_top1}
    if method == "dist" and pair.dist_top1 is not None:
        return {
            "paper": DIST_PAPER,
            "table": "CIFAR-100 results of the official repository (hunto/DIST_KD README), mean ± std",
            "row": f"{pair.row}, DIST",
            "top1": pair.dist_top1,
            "std": pair.dist_std,
        }
    return None


def recipe(method: str, pair: Pair) -> dict[str, Any]:
    name = f"{method}_{pair.teacher}_{pair.student}"
    values: dict[str, Any] = {
        "name": f"cifar100-{name}",
        "seed": 0,
        "epochs": 240,
        "data": {"dataset": "cifar100", "batch_size": 64, "augment": "crop_flip", "crop_padding": 4},
        "student": {"name": pair.student},
        "teacher": {
            "name": pair.teacher,
            "checkpoint": f"teachers/cifar100/{TEACHER_DIRS[pair.teacher]}/ckpt_epoch_240.pth",
        },
        "optim": {"name": "sgd", "lr": pair.lr, "momentum": 0.9, "weight_decay": 5.0e-4},
        "schedule": {"name": "multistep", "milestones": [150, 180, 210], "gamma": 0.1},
        "loss": loss_spec(method, pair),
    }
    ref = reference(method, pair)
    if ref is not None:
        values["reference"] = ref
    return values


TITLES = {
    "kd": "Hinton KD (0.1·CE + 0.9·KD, τ = 4)",
    "dkd": "DKD, Decoupled KD (Zhao et al., CVPR 2022)",
    "dist": "DIST (Huang et al., NeurIPS 2022)",
}


def render(method: str, pair: Pair) -> str:
    path = f"recipes/cifar100/baselines/{method}_{pair.teacher}_{pair.student}.yaml"
    header = [
        f"# {TITLES[method]} on CIFAR-100: {pair.row}.",
        "# Generated by tools/make_baseline_recipes.py; edit the generator, not this file.",
        f"#   datakd distill --config {path} --data-root DATA/cifar100 \\",
        f"#       --teacher-checkpoint teachers/cifar100/{TEACHER_DIRS[pair.teacher]}/ckpt_epoch_240.pth",
    ]
    body = ""
    for key, value in recipe(method, pair).items():
        # Leaf mappings inline (one line per section or loss term); the reference block-style, for reading.
        flow = None if isinstance(value, dict) and key != "reference" else False
        body += yaml.safe_dump(
            {key: value}, sort_keys=False, default_flow_style=flow, width=110, allow_unicode=True
        )
    return "\n".join(header) + "\n" + body


def render_all() -> dict[str, str]:
    return {
        f"{method}_{pair.teacher}_{pair.student}.yaml": render(method, pair)
        for method in ("kd", "dkd", "dist")
        for pair in PAIRS
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    files = render_all()
    if args.check:
        stale = [
            n
            for n, text in files.items()
            if not (args.out / n).is_file() or (args.out / n).read_text() != text
        ]
        # The folder also holds the feature baselines (tools/make_feature_recipes.py): only our methods count.
        ours = [p for m in ("kd", "dkd", "dist") for p in args.out.glob(f"{m}_*.yaml")]
        extra = sorted(p.name for p in ours if p.name not in files)
        for name in stale + extra:
            print(f"out of date: {args.out / name}")
        return 1 if stale or extra else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.out / name).write_text(text)
    print(f"wrote {len(files)} recipes to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
