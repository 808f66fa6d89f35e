"""Write the EffDstl (seed 003) recipes: ImageNet Table 1 (EffDstl, WSL, KD, no distillation; 300-epoch
"advanced" and 100-epoch), and the CIFAR-10/100 recipes of the paper's §4 soft-target analysis.

Usage: python tools/make_effdstl_recipes.py   (rewrites recipes/{imagenet,cifar10,cifar100}/effdstl/)
Edit this file, not the generated YAML. Spec: /work/shared/spec/methods.md §4; docs/methods/effdstl.md.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1] / "recipes"
IMAGENET_TEACHERS = "teachers/imagenet"

# ---------------------------------------------------------------------------------------------- ImageNet

# (student, stage-1 teacher, stage-2 teacher, Table 1 numbers per method: (advanced, 100-epoch) top-1/top-5)
PAIRS: dict[str, dict[str, Any]] = {
    "resnet18": {
        "student": "tv:resnet18",
        "label": "ResNet18 (T: ResNet34 TV 73.31 -> ResNet34d timm 77.12)",
        "teacher1": ("tv:resnet34", f"{IMAGENET_TEACHERS}/resnet34-b627a593.pth", 73.31),
        "teacher2": ("timm:resnet34d", f"{IMAGENET_TEACHERS}/resnet34d_ra2-f8dcfcaf.pth", 77.12),
        "table": {
            "vanilla": ((72.30, 90.84), (69.75, 89.07)),
            "kd": ((72.90, 91.18), (70.67, 90.04)),
            "wsl": ((73.44, 91.22), (72.04, 90.70)),
            "effdstl": ((74.07, 91.54), (72.17, 90.95)),
        },
    },
    "mobilenetv1": {
        "student": "mobilenetv1",
        "label": "MobileNetV1 (T: ResNet50 TV 76.16 -> ResNet50 timm 79.04)",
        "teacher1": ("tv:resnet50", f"{IMAGENET_TEACHERS}/resnet50-0676ba61.pth", 76.16),
        "teacher2": ("timm:resnet50", f"{IMAGENET_TEACHERS}/resnet50_ram-a26f946b.pth", 79.04),
        "table": {
            "vanilla": ((73.29, 91.38), (68.87, 88.76)),
            "kd": ((74.50, 92.08), (70.49, 89.92)),
            "wsl": ((74.78, 91.89), (71.52, 90.34)),
            "effdstl": ((75.49, 92.32), (71.91, 90.38)),
        },
    },
}

# The two schedules of Table 1. "advanced" is the paper's (spec §4.4); "100ep" is [I]: the standard
# torchvision step recipe, with stage 2 over the last 20 % at a tenth of the initial lr (the advanced
# recipe's ratio 0.5 -> 0.05), cosine to a hundredth of that (0.05 -> 5e-4).
SCHEDULES: dict[str, dict[str, Any]] = {
    "advanced": {
        "epochs": 300,
        "switch": 240,
        "batch": 1024,
        "optim": {"name": "sgd", "lr": 0.5, "momentum": 0.9, "weight_decay": 4.0e-5},
        "schedule": {"name": "cosine", "eta_min": 1.0e-5, "decay_epochs": 240},
        "single_schedule": {"name": "cosine", "eta_min": 1.0e-5},
        "stage2_optim": {"lr": 0.05, "weight_decay": 0.0},
        "stage2_schedule": {"name": "cosine", "eta_min": 5.0e-4, "decay_epochs": None},
        "note": "300 epochs, per-iteration cosine 0.5 -> 1e-5 over stage 1 (240 epochs), batch 1024, wd 4e-5",
    },
    "100ep": {
        "epochs": 100,
        "switch": 80,
        "batch": 256,
        "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1.0e-4},
        "schedule": {"name": "multistep", "milestones": [30, 60, 90], "gamma": 0.1},
        "single_schedule": {"name": "multistep", "milestones": [30, 60, 90], "gamma": 0.1},
        "stage2_optim": {"lr": 0.01, "weight_decay": 0.0},
        "stage2_schedule": {"name": "cosine", "eta_min": 1.0e-4, "decay_epochs": None},
        "note": "100 epochs, step decay x0.1 at 30/60/90, batch 256, lr 0.1, wd 1e-4 (not in the paper)",
    },
}

LOSSES: dict[str, dict[str, Any]] = {
    # EffDstl stage 1 (spec §4.2) + the stage-2 CKM term, off until the switch.
    "effdstl": {
        "ce": {"weight": 1.0, "label_smoothing": 0.1},
        "wsl": {"weight": 0.5, "temperature": 2.0, "variant": "effdstl"},
        "ckm": {"type": "kd", "weight": 0.0, "temperature": 1.0, "scale_tau2": False, "form": "soft_ce"},
    },
    # Official WSL: CE + 2.5·WSL at τ = 2 (Zhou et al. 2021).
    "wsl": {"ce": {"weight": 1.0}, "wsl": {"weight": 2.5, "temperature": 2.0, "variant": "official"}},
    # [I] mdistiller's ImageNet KD weighting (the paper tuned its baselines but gives no values).
    "kd": {"ce": {"weight": 0.5}, "kd": {"weight": 0.5, "temperature": 1.0}},
    "vanilla": {"ce": {"weight": 1.0, "label_smoothing": 0.1}},
}

ROW_NAMES = {"effdstl": "EffDstl", "wsl": "WSL", "kd": "KD", "vanilla": "No Distill"}

DESCRIPTIONS = {
    "effdstl": "EffDstl: stage 1 CE(label smoothing 0.1) + 0.5·WSL(τ=2, EffDstl weight) with the weak "
    "teacher; stage 2 switches to the strong teacher, a fresh SGD (wd 0) and consistent knowledge mining "
    "only (kd term at τ=1 on the ckm target transform: teacher τ=0.7, reg&cor samples -> label smoothed "
    "to 0.99)",
    "wsl": "WSL baseline (official weights): CE + 2.5·WSL(τ=2); like every distillation baseline of Table 1 "
    "it also switches to the strong teacher (and EffDstl's stage-2 optimizer) for the last 20 % of training",
    "kd": "KD baseline: 0.5·CE + 0.5·KD(τ=1) [I]; teacher and optimizer switch like EffDstl's stage 2",
    "vanilla": "no distillation: CE with label smoothing 0.1 [I], one schedule over all epochs",
}


def imagenet_recipe(student: str, method: str, schedule_name: str) -> tuple[str, dict[str, Any]]:
    pair, sched = PAIRS[student], SCHEDULES[schedule_name]
    suffix = "" if schedule_name == "advanced" else "_100ep"
    name = f"imagenet-effdstl-{student}-{method}{suffix}"
    (t1_name, t1_ckpt, t1_top1), (t2_name, t2_ckpt, t2_top1) = pair["teacher1"], pair["teacher2"]
    distill = method != "vanilla"
    recipe: dict[str, Any] = {
        "name": name,
        "seed": 0,
        "epochs": sched["epochs"],
        "data": {
            "dataset": "imagefolder",
            "batch_size": sched["batch"],
            "eval_batch_size": 250,
            "augment": "imagenet",
            "image_size": 224,
            "loader": "workers",
            "workers": 16,
        },
        "student": {"name": pair["student"]},
    }
    if distill:
        recipe["teacher"] = {"name": t1_name, "checkpoint": t1_ckpt}
    recipe["optim"] = dict(sched["optim"])
    recipe["schedule"] = dict(sched["schedule"] if distill else sched["single_schedule"])
    recipe["engine"] = {"amp": True, "channels_last": True, "checkpoint_every_iters": 2000}
    recipe["loss"] = LOSSES[method]
    if method == "effdstl":
        recipe["target_transform"] = {"name": "ckm", "teacher_temperature": 0.7, "smoothing": 0.99}
    if distill:
        recipe["events"] = [
            {
                "name": "switch_teacher",
                "at": sched["switch"],
                "checkpoint": t2_ckpt,
                "model": t2_name,
                "optim": sched["stage2_optim"],
                "schedule": sched["stage2_schedule"],
            }
        ]
        if method == "effdstl":
            weights = {"ce": 0.0, "wsl": 0.0, "ckm": 1.0}
            recipe["events"].append({"name": "set_loss_weights", "at": sched["switch"], "weights": weights})
    column = 0 if schedule_name == "advanced" else 1
    top1, top5 = pair["table"][method][column]
    row = f"{pair['label']}, {ROW_NAMES[method]}"
    recipe["reference"] = {
        "paper": "003",
        "table": 1,
        "row": row,
        "column": "Advanced" if schedule_name == "advanced" else "100-epochs",
        "top1": top1,
        "top5": top5,
    }
    if distill:
        recipe["reference"].update({"teacher_top1": t1_top1, "stage2_teacher_top1": t2_top1})
    command = "distill" if distill else "train"
    header = [
        f"EffDstl (seed 003) Table 1 on ImageNet, {pair['label'].split(' (')[0]} from scratch:",
        DESCRIPTIONS[method] + ".",
        sched["note"] + ".",
    ]
    if distill:
        header.append(
            f"Teachers: {t1_name} then {t2_name} at epoch {sched['switch']} (plain state dicts: "
            "torchvision's and timm's released weight files)."
        )
    if method == "effdstl" and schedule_name == "advanced":
        header.append(
            "The released code switches one epoch earlier: add the overrides events.0.at=239 events.1.at=239 "
            "events.0.schedule.decay_epochs=62 (spec §4.4)."
        )
    header.append("bf16 autocast + channels_last (the paper used fp16 with a static loss scale).")
    header.append(f"  datakd {command} --config recipes/imagenet/effdstl/{student}_{method}{suffix}.yaml \\")
    header.append("      --data-root DATA/imagenet" + (f" --teacher-checkpoint {t1_ckpt}" if distill else ""))
    return f"imagenet/effdstl/{student}_{method}{suffix}.yaml", {"_header": header, **recipe}


# ---------------------------------------------------------------------------------------------- CIFAR (§4)

CIFAR = {
    "cifar10": {
        "student": "resnet8",
        "weak": ("resnet20", "teachers/cifar10/resnet20/last.pt"),
        "strong": ("resnet56", "teachers/cifar10/resnet56/last.pt"),
        "teachers_to_train": ["resnet20", "resnet56"],
    },
    "cifar100": {
        "student": "resnet8",
        "weak": ("resnet20", "teachers/cifar100/resnet20/last.pt"),
        "strong": ("resnet56", "teachers/cifar100/resnet56_vanilla/ckpt_epoch_240.pth"),
        "teachers_to_train": ["resnet20"],
    },
}

CRD_OPTIM = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5.0e-4}
CRD_SCHEDULE = {"name": "multistep", "milestones": [150, 180, 210], "gamma": 0.1}
MEAL_V2 = {"kd": {"weight": 1.0, "temperature": 1.0, "scale_tau2": False, "form": "soft_ce"}}


def _cifar_base(dataset: str, name: str) -> dict[str, Any]:
    return {
        "name": f"{dataset}-effdstl-{name}",
        "seed": 0,
        "epochs": 240,
        "data": {
            "dataset": dataset,
            "batch_size": 64,
            "eval_batch_size": 500,
            "augment": "crop_flip",
            "crop_padding": 4,
        },
    }


def cifar_recipes(dataset: str) -> dict[str, dict[str, Any]]:
    spec = CIFAR[dataset]
    (weak, weak_ckpt), (strong, strong_ckpt) = spec["weak"], spec["strong"]
    student = spec["student"]
    out: dict[str, dict[str, Any]] = {}
    reference = {"paper": "003", "figure": 5, "note": "the paper plots normalised scores only; no number"}
    for model in spec["teachers_to_train"]:
        out[f"teacher_{model}"] = {
            "_header": [
                f"A {dataset.upper()} {model} teacher for EffDstl's §4 analysis (CRD protocol, CE only).",
                f"  datakd train --config recipes/{dataset}/effdstl/teacher_{model}.yaml \\",
                f"      --data-root DATA/{dataset} --out teachers/{dataset}/{model}",
            ],
            **_cifar_base(dataset, f"teacher-{model}"),
            "student": {"name": model},
            "optim": CRD_OPTIM,
            "schedule": CRD_SCHEDULE,
            "loss": {"ce": {"weight": 1.0}},
            "reference": {"paper": "003", "note": "teacher of the §4 analysis; the paper gives no accuracy"},
        }
    for which, (model, ckpt) in (("weak", (weak, weak_ckpt)), ("strong", (strong, strong_ckpt))):
        out[f"base_{which}"] = {
            "_header": [
                "EffDstl §4 base framework (MEAL-V2 style: soft CE to the teacher at τ=1, no CE) with the "
                f"{which} teacher {model}: gives acc{'-' if which == 'weak' else '+'} of the normalised "
                "score (acc - acc-)/(acc+ - acc-).",
                f"  datakd distill --config recipes/{dataset}/effdstl/base_{which}.yaml \\",
                f"      --data-root DATA/{dataset}",
            ],
            **_cifar_base(dataset, f"base-{which}"),
            "student": {"name": student},
            "teacher": {"name": model, "checkpoint": ckpt},
            "optim": CRD_OPTIM,
            "schedule": CRD_SCHEDULE,
            "loss": MEAL_V2,
            "reference": reference,
        }
    out["replace"] = {
        "_header": [
            f"EffDstl §4.1 (Fig. 5): the weak teacher {weak}'s targets replaced by the strong {strong}'s on "
            "a sample subset, MEAL-V2-style base. Sweep the grid with the overrides "
            "target_transform.scheme=full|partial|confidence and "
            "'target_transform.subset=all|reg|cor|reg&cor|not_correct|...'.",
            f"  datakd distill --config recipes/{dataset}/effdstl/replace.yaml --data-root DATA/{dataset}",
        ],
        **_cifar_base(dataset, "replace"),
        "student": {"name": student},
        "teacher": {"name": weak, "checkpoint": weak_ckpt},
        "optim": CRD_OPTIM,
        "schedule": CRD_SCHEDULE,
        "loss": MEAL_V2,
        "target_transform": {
            "name": "replace",
            "scheme": "confidence",
            "subset": "reg&cor",
            "checkpoint": strong_ckpt,
            "model": strong,
        },
        "reference": reference,
    }
    out["manipulate"] = {
        "_header": [
            f"EffDstl §4.2 (Fig. 6): the weak teacher {weak}'s targets manipulated by hand on a subset. "
            "Sweep with overrides: target_transform.scheme=label_smoothing (confidence t in {0.9, 0.95, "
            "0.99}), or teacher_amplification / student_amplification with target_transform.confidence=null "
            "target_transform.delta=0.1 (δ in {0.05, 0.1, 0.2}); and target_transform.subset.",
            f"  datakd distill --config recipes/{dataset}/effdstl/manipulate.yaml --data-root DATA/{dataset}",
        ],
        **_cifar_base(dataset, "manipulate"),
        "student": {"name": student},
        "teacher": {"name": weak, "checkpoint": weak_ckpt},
        "optim": CRD_OPTIM,
        "schedule": CRD_SCHEDULE,
        "loss": MEAL_V2,
        "target_transform": {
            "name": "manipulate",
            "scheme": "label_smoothing",
            "confidence": 0.99,
            "subset": "reg&cor",
        },
        "reference": {**reference, "figure": 6},
    }
    for key, subset, what in (
        (
            "trainval_keep",
            "reg&cor",
            "keeps the teacher's targets on the samples it gets wrong (as CKM does)",
        ),
        (
            "trainval_manipulate",
            "reg&cor|not_correct",
            "also replaces the targets of the samples the teacher gets wrong by the smoothed label",
        ),
    ):
        out[key] = {
            "_header": [
                "EffDstl §4 Fig. 8: training vs validation accuracy with and without keeping the weak "
                f"teacher {weak}'s incorrectly predicted samples. This run {what}: label smoothing "
                f"(t = 0.99) on '{subset}'. Compare the pair with `datakd effdstl trainval` (train_top1 is "
                "logged every epoch).",
                f"  datakd distill --config recipes/{dataset}/effdstl/{key}.yaml \\",
                f"      --data-root DATA/{dataset} --out runs/{dataset}/{key}",
                f"  datakd effdstl trainval runs/{dataset}/trainval_keep \\",
                f"      runs/{dataset}/trainval_manipulate",
            ],
            **_cifar_base(dataset, key.replace("_", "-")),
            "student": {"name": student},
            "teacher": {"name": weak, "checkpoint": weak_ckpt},
            "optim": CRD_OPTIM,
            "schedule": CRD_SCHEDULE,
            "loss": MEAL_V2,
            "target_transform": {
                "name": "manipulate",
                "scheme": "label_smoothing",
                "confidence": 0.99,
                "subset": subset,
            },
            "reference": {
                "paper": "003",
                "figure": 8,
                "note": "qualitative: manipulating the wrong samples raises training, lowers test accuracy",
            },
        }
    out["effdstl"] = {
        "_header": [
            "EffDstl's two stages at CIFAR scale [I] (the paper reports EffDstl on ImageNet only): stage 1 "
            f"(epochs 0-191) CE(label smoothing 0.1) + 0.5·WSL(τ=2) with the weak {weak} on the CRD "
            f"optimizer; stage 2 (last 20 %) switches to the strong {strong}, a fresh SGD at a tenth of the "
            "lr (wd 0, cosine to 5e-5) and consistent knowledge mining only.",
            f"  datakd distill --config recipes/{dataset}/effdstl/effdstl.yaml --data-root DATA/{dataset}",
        ],
        **_cifar_base(dataset, "effdstl"),
        "student": {"name": student},
        "teacher": {"name": weak, "checkpoint": weak_ckpt},
        "optim": CRD_OPTIM,
        "schedule": {"name": "multistep", "milestones": [150, 180], "gamma": 0.1},
        "loss": LOSSES["effdstl"],
        "target_transform": {"name": "ckm", "teacher_temperature": 0.7, "smoothing": 0.99},
        "events": [
            {
                "name": "switch_teacher",
                "at": 192,
                "checkpoint": strong_ckpt,
                "model": strong,
                "optim": {"lr": 0.005, "weight_decay": 0.0},
                "schedule": {"name": "cosine", "eta_min": 5.0e-5},
            },
            {"name": "set_loss_weights", "at": 192, "weights": {"ce": 0.0, "wsl": 0.0, "ckm": 1.0}},
        ],
        "reference": {"paper": "003", "note": "EffDstl is only reported on ImageNet (Table 1)"},
    }
    return {f"{dataset}/effdstl/{key}.yaml": value for key, value in out.items()}


# ---------------------------------------------------------------------------------------------- writing


def render(recipe: dict[str, Any]) -> str:
    header = recipe.pop("_header")
    lines = []
    for line in header:  # indented lines are commands, kept as they are
        lines += (
            [f"# {line}"]
            if line.startswith(" ")
            else textwrap.wrap(line, 108, initial_indent="# ", subsequent_indent="# ")
        )
    lines.append("# Generated by tools/make_effdstl_recipes.py; edit the generator, not this file.")
    body = yaml.safe_dump(recipe, sort_keys=False, default_flow_style=None, width=110)
    return "\n".join(lines) + "\n" + body


def all_recipes() -> dict[str, dict[str, Any]]:
    recipes: dict[str, dict[str, Any]] = {}
    for student in PAIRS:
        for method in LOSSES:
            for schedule_name in SCHEDULES:
                path, recipe = imagenet_recipe(student, method, schedule_name)
                recipes[path] = recipe
    for dataset in CIFAR:
        recipes.update(cifar_recipes(dataset))
    return recipes


def main() -> None:
    for relative, recipe in all_recipes().items():
        path = ROOT / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(recipe))
        print(f"wrote {path.relative_to(ROOT.parent)}")


if __name__ == "__main__":
    main()
