"""Every TST recipe's hyper-parameters against the authors' values, row by row, with the source of each row.

AUTHORS holds what the authors' released configs say (shaoshitong/TST at commit f9616a2,
SDAKD_FOR_BASELINE/configs/<file>, read by `SDAKD_FOR_BASELINE/Env/Environment_SDA.py` and
`train_for_sdakd.py`) or, where a recipe follows the paper instead, the paper's value and where it says so.
How a config key maps to a recipe key:

* `SDA.convertor_training_epoch` -> `events[tst_search].at` (0-indexed epochs, Stage II runs before them:
  `if self.epoch in self.convertor_training_epoch` at the start of `run_one_train_epoch`);
* `SDA.convertor_epoch_number` -> `events[tst_search].epochs` (passes over the loader per call);
* `SDA.solve_number` -> `augmenter.num_ops` (N_A);
* `train_batch_size // 2` (train_for_sdakd.py builds the loader with half the batch; the other half is
  f_DE(x)) -> `data.batch_size`;
* `optimizer.lr`, `optimizer.weight_decay` (SGD, nesterov=True in train_for_sdakd.py), `epoch`,
  `scheduler.milestones` -> `optim`, `epochs`, `schedule`;
* `KDLoss(..., alpha=1, beta=1)` = 1·CE + `criticion.alpha`·τ²·KL -> `loss.ce.weight` 1,
  `loss.kd.weight` = `criticion.alpha`, `loss.kd.temperature` = `criticion.temperature`;
* Stage II: `SDAGAN.py` builds SGD(lr=0.01, momentum=0.9) itself (the config's `SDA.lr` is never read) and
  calls `criticion` with its defaults α = β = 1 -> `augmenter.lr`, `momentum`, `alpha`, `beta`.

A recipe may differ from its row only where DEVIATIONS names the key and the reason, or where its
ablation table varies that key (ABLATION_KEYS, read from the recipe's file name).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from datakd.augmenters.base import build_augmenter
from datakd.config import load_config

REPO = Path(__file__).resolve().parents[1]
DENSE = (
    "coco",
    "cityscapes",
)  # detection / segmentation TST recipes have no authors' table: test_tst_dense.py
RECIPES = sorted(
    p
    for p in (REPO / "recipes").glob("*/tst/**/*.yaml")
    if p.relative_to(REPO / "recipes").parts[0] not in DENSE
)
CODE = "shaoshitong/TST@f9616a2 SDAKD_FOR_BASELINE/configs/"
SEVEN = [32, 62, 92, 122, 152, 182, 212]
STAGE2 = {"stage2_lr": 0.01, "stage2_momentum": 0.9, "alpha": 1.0, "beta": 1.0}
CIFAR = {"epochs": 240, "milestones": [150, 180, 210], "tau": 4.0, "w_ce": 1.0, "nesterov": True, **STAGE2}


def cifar(source: str, at: list[int], search: int, lr: float, wd: float, w_kl: float, batch: int = 128):
    row = {**CIFAR, "at": at, "search_epochs": search, "num_ops": 4, "lr": lr, "weight_decay": wd}
    return {**row, "w_kl": w_kl, "batch": batch, "source": CODE + source}


# (dataset, teacher, student) -> the authors' values
AUTHORS: dict[tuple[str, str, str], dict[str, Any]] = {
    ("cifar100", "resnet110", "resnet20"): cifar("resnet110_resnet20_c100_diversify.yaml", [30, 90], 1, 0.1,
                                                 1e-4, 0.5),
    ("cifar100", "resnet110", "resnet32"): cifar("resnet110_resnet32_c100_diversify.yaml", [30, 90], 30, 0.1,
                                                 1e-4, 0.5),
    ("cifar100", "wrn_40_2", "wrn_40_1"): cifar("wrn40_2_wrn40_1_c100_diversify.yaml", [30, 90], 10, 0.05,
                                                1e-4, 1.0),
    ("cifar100", "wrn_40_2", "wrn_16_2"): cifar("wrn40_2_wrn16_2_c100_diversify.yaml", [30, 90], 30, 0.1,
                                                1e-4, 1.0),
    ("cifar100", "resnet32x4", "resnet8x4"): cifar("resnet32x4_resnet8x4_c100_diversify.yaml", [30, 90], 30,
                                                   0.1, 1e-4, 1.0),
    ("cifar100", "vgg13", "vgg8"): cifar("vgg13_vgg8_c100_diversify.yaml", SEVEN, 5, 0.1, 1e-4, 1.0),
    ("cifar100", "wrn_40_2", "shufflev1"): cifar("wrn40_2_shufflentv1_c100_diversify.yaml", SEVEN, 5, 0.05,
                                                 5e-4, 1.0),
    ("cifar100", "resnet32x4", "shufflev1"): cifar("resnet32x4_shufflenetv1_c100_diversify.yaml", [30, 90],
                                                   30, 0.02, 1e-4, 1.0, batch=64),
    ("cifar100", "vgg13", "mobilenetv2"): cifar("vgg13_mobilenetv2_c100_diversify.yaml", [30, 90], 30, 0.1,
                                                1e-4, 1.0),
    ("cifar100", "wrn_40_4", "wrn_16_2"): cifar("wrn40_4_wrn16_2_c100_diversify.yaml", [30, 90], 30, 0.1,
                                                1e-4, 1.0),
    ("cifar100", "wrn_28_10", "wrn_16_2"): cifar("wrn28_10_wrn16_2_c100_diversify.yaml", [30, 90], 30, 0.1,
                                                 1e-4, 1.0),
    ("cifar100", "resnet56", "resnet20"): cifar("resnet56_resnet20_c100_diversify.yaml", [30, 90], 1, 0.1,
                                                1e-4, 1.0),
    # ImageNet: the recipes follow the paper (App. B), whose protocol differs from the configs
    # (configs/resnet34_resnet18_imagenet_diversify.yaml: lr 0.3, milestones 40/70/100, Stage II at 10/25).
    ("imagefolder", "tv:resnet34", "tv:resnet18"): {
        "epochs": 100, "milestones": [30, 60, 90], "tau": 1.0, "w_ce": 1.0, "w_kl": 1.0, "nesterov": False,
        "at": [10, 20], "search_epochs": 5, "num_ops": 4, "lr": 0.1, "weight_decay": 1e-4, "batch": 512,
        **STAGE2,
        "source": "paper 000 App. B (classification settings and B.2: Stage II at 10 and 20 for 5 epochs, "
                  "τ = 1, loss weights 1, batch 512, SGD lr 0.1 /10 at 30/60/90, wd 1e-4); N_A 4 and the "
                  "Stage II optimiser from " + CODE + "resnet34_resnet18_imagenet_diversify.yaml + SDAGAN.py",
    },
}  # fmt: skip
# Table 2's ResNet-50 -> MobileNet-V1 follows the same App. B ImageNet protocol as ResNet-34 -> ResNet-18.
AUTHORS[("imagefolder", "tv:resnet50", "mobilenetv1")] = {
    **AUTHORS[("imagefolder", "tv:resnet34", "tv:resnet18")],
    "source": "paper 000 App. B (the ImageNet protocol of Table 2, shared by both ImageNet pairs)",
}

# recipe (relative to recipes/) -> {key: why it differs from its row}
DEVIATIONS: dict[str, dict[str, str]] = {
    "cifar100/tst/wrn_40_2-wrn_16_2.yaml": {
        "num_ops": "N_A = 2: Table 1's 76.75 is Table 5's N_A = 2 entry (solve_number 4 gives 76.58)"
    },
}

# ablation table -> keys its recipes vary on purpose (the values are in the file names / paper tables)
ABLATION_KEYS = {
    "table5": {"num_ops", "at", "search_epochs"},  # learnable yes/no × N_A ∈ {2, 4, 6}
    "table6": {"num_ops", "search_epochs"},  # n_encoder ∈ {0, 1, 15, 30} epochs, N_A 4
    # encoder modes with n_encoder = 30, N_A 4; "Attack" searches the images themselves every step
    "table7": {"num_ops", "search_epochs", "at", "stage2_lr", "stage2_momentum"},
    "table8": {"w_ce", "w_kl", "alpha", "beta"},  # loss-weight sweeps
    "table9": set(),  # few-shot: only data.train_subset differs (checked by test_tst_recipes.py)
}


def recipe_values(path: Path) -> tuple[tuple[str, str, str], dict[str, Any]]:
    cfg = load_config(path)
    augmenter = build_augmenter(cfg.augmenter)
    searches = [e for e in cfg.events if e["name"] == "tst_search"]
    assert len(searches) <= 1, "one tst_search event per recipe"
    search = searches[0] if searches else {"at": [], "epochs": 0}
    values = {
        "epochs": cfg.epochs,
        "milestones": [float(m) for m in cfg.schedule.milestones],
        "tau": cfg.loss["kd"]["temperature"],
        "w_ce": cfg.loss["ce"]["weight"],
        "w_kl": cfg.loss["kd"]["weight"],
        "nesterov": cfg.optim.nesterov,
        "lr": cfg.optim.lr,
        "weight_decay": cfg.optim.weight_decay,
        "batch": cfg.data.batch_size,
        "at": list(search.get("at", [30, 90])),
        "search_epochs": search.get("epochs", 1),
        # the Table 7 "Attack" augmenter has no encoders and no Stage II optimiser
        "num_ops": getattr(augmenter, "num_ops", None),
        "stage2_lr": getattr(augmenter, "lr", None),
        "stage2_momentum": getattr(augmenter, "momentum", None),
        "alpha": augmenter.alpha,
        "beta": augmenter.beta,
    }
    assert cfg.optim.name == "sgd" and cfg.optim.momentum == 0.9 and cfg.schedule.name == "multistep"
    return (cfg.data.dataset, str(cfg.teacher.name), str(cfg.student.name)), values


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.relative_to(REPO / "recipes").as_posix())
def test_recipe_matches_authors(path: Path) -> None:
    rel = path.relative_to(REPO / "recipes").as_posix()
    key, values = recipe_values(path)
    assert key in AUTHORS, f"{rel}: no row for {key} in AUTHORS; add the authors' values and their source"
    row = AUTHORS[key]
    table = re.search(r"/ablations/(table\d+)/", rel)
    free = set(DEVIATIONS.get(rel, {})) | (ABLATION_KEYS[table.group(1)] if table else set())
    if values["search_epochs"] == 0:  # no Stage II: its epochs do not matter
        free.add("at")
    expected = {k: (list(map(float, v)) if k == "milestones" else v) for k, v in row.items() if k != "source"}
    wrong = {k: (values[k], expected[k]) for k in expected if k not in free and values[k] != expected[k]}
    assert not wrong, f"{rel} differs from {row['source']}: {{key: (recipe, authors)}} = {wrong}"


def test_ablations_vary_what_their_names_say() -> None:
    """The free keys of the ablation recipes hold the values their file names (and paper tables) give."""
    for path in RECIPES:
        rel = path.relative_to(REPO / "recipes").as_posix()
        _, values = recipe_values(path)
        if m := re.search(r"table5/.*-(learnable|fixed)-na(\d)\.yaml$", rel):
            assert values["num_ops"] == int(m.group(2)), rel
            assert (values["search_epochs"] > 0 and values["at"] == [30, 90]) == (m.group(1) == "learnable")
        elif m := re.search(r"table6/.*-search(\d+)\.yaml$", rel):
            assert (values["num_ops"], values["search_epochs"]) == (4, int(m.group(1))), rel
        elif "/table7/" in rel and not rel.endswith("-attack.yaml"):
            assert (values["num_ops"], values["search_epochs"]) == (4, 30), rel
        elif m := re.search(r"table8/.*-wce([\d.]+)-wkl([\d.]+)-a([\d.]+)-b([\d.]+)\.yaml$", rel):
            got = (values["w_ce"], values["w_kl"], values["alpha"], values["beta"])
            assert got == tuple(float(g) for g in m.groups()), rel


def test_deviations_name_existing_recipes() -> None:
    for rel, keys in DEVIATIONS.items():
        assert (REPO / "recipes" / rel).is_file(), rel
        assert set(keys) <= set(next(iter(AUTHORS.values()))), keys
