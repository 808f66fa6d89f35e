"""Real-data benchmark on a 2-core CPU: every headline method distils the same student from the same teacher.

Protocol: Fashion-MNIST at its native 28×28 grayscale, a fixed 4,000-image training subset
(``split_seed`` 0, the same images for teachers and students) and a fixed 5,000-image subset of the test
split; a CIFAR ResNet-20 teacher trained once with CE and cached by a content hash of its config and the
dataset files; a CIFAR ResNet-8 student; every arm has the same epoch budget, optimizer and schedule and
runs over 3 seeds. The runs go through ``datakd distill`` / ``datakd train`` and the sweep machinery
(finished runs are skipped, killed ones resume), so a rerun continues where it stopped and then rewrites
``RESULTS.md``.

    python benchmarks/fmnist/run.py --data-root ../shared/data/fashion-mnist --out runs/fmnist-bench
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from benchmarks.common import content_hash, run_logged, write_yaml  # noqa: E402
from datakd.checkpoint import atomic_write_text  # noqa: E402
from datakd.sweep import (  # noqa: E402
    SweepRun,
    aggregate,
    command_for,
    plan,
    run_finished,
    run_state,
    write_results,
)

DEFAULT_DATA = HERE.parents[2] / "shared" / "data" / "fashion-mnist"

# Why these sizes: 30 student runs (10 arms × 3 seeds) plus two teachers must fit in about an hour on two
# cores, so the student is the zoo's smallest ResNet and the data a fixed 4k-image slice at 28×28; evaluating
# every epoch on 5k test images (not all 10k) keeps evaluation under a tenth of a run.
EPOCHS = 6
TEACHER_EPOCHS = 15
TRAIN_SUBSET = 4000
TEST_SUBSET = 5000

DATA: dict[str, Any] = {
    "dataset": "fashion-mnist",
    "options": {"pad_to_32": False, "rgb": False},
    "train_subset": TRAIN_SUBSET,
    "test_subset": TEST_SUBSET,
    "split_seed": 0,
    "batch_size": 128,
    "eval_batch_size": 1000,
    "augment": "crop_flip",
    "crop_padding": 2,
}
OPTIM = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}
SCHEDULE = {"name": "cosine", "warmup_epochs": 0.5, "warmup_start_factor": 0.1}
GRAY = {"in_channels": 1}

TEACHERS: dict[str, str] = {"main": "resnet20", "weak": "resnet14"}
STUDENT = "resnet8"

KD = {"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "temperature": 4.0}}
KD_MIX = {**KD, "kd_mix": {"type": "kd", "views": ["mix"], "weight": 0.9, "temperature": 4.0}}

# Each arm: loss terms and extras on top of the shared student config. Weights are the CIFAR recipes'
# (RepDistiller protocol) unless a comment says otherwise; epoch-based settings are scaled to EPOCHS.
ARMS: dict[str, dict[str, Any]] = {
    "ce": {"loss": {"ce": {"weight": 1.0}}},
    "kd": {"loss": KD},
    "dkd": {
        "loss": {
            "ce": {"weight": 1.0},
            # 20 of 240 warm-up epochs → half of one of 6.
            "dkd": {"alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup_epochs": 0.5},
        }
    },
    "dist": {
        "loss": {
            "ce": {"weight": 1.0},
            "dist": {"weight": 2.0, "beta": 1.0, "gamma": 1.0, "temperature": 4.0},
        }
    },
    "tlcutmix": {"loss": KD_MIX, "augmenter": {"name": "tlcutmix", "alpha": 1.0}},
    "tlcutmix_pick": {
        "loss": KD_MIX,
        "augmenter": {"name": "tlcutmix_pick", "runs": 2, "criterion": "kld", "temperature": 4.0},
    },
    "tst": {
        # Stage III trains on [f_DE(x) ‖ x] with ½·KD on each half (w_ce = w_kl = 1, τ = 4); Stage II searches
        # for one pass at 30/240 and 90/240 of training → the start of epochs 1 and 2 of 6 (0.75, 2.25).
        "loss": {"ce": {"weight": 1.0}, "kd": {"weight": 1.0, "temperature": 4.0}},
        "augmenter": {
            "name": "tst",
            "encoders": "{out}/tst_encoders.pt",
            "num_ops": 4,
            "fit": {"epochs_spatial": 10, "epochs_color": 10, "batch_size": 64, "subset": 3000, "lr": 0.005},
        },
        "events": [{"name": "tst_search", "at": [1, 2], "epochs": 1}],
    },
    "iikd": {
        # "Only II-KD": CE + 0.4·(RKD on logits + KD-SVD + MHGD over the stage taps), the distillation
        # gradient clipped to the CE gradient's norm (released code).
        "loss": {"ce": {"weight": 1.0}, "iikd": {"weight": 0.4}},
    },
    "wsl_ckm": {
        # EffDstl: stage 1 = CE(ε=0.1) + 0.5·WSL(τ=2) from the weak teacher for 5 of 6 epochs; stage 2
        # switches to the main teacher (the one every other arm uses, so this arm never sees a stronger
        # one), a fresh SGD at a tenth of the lr with wd 0 on a cosine, and consistent knowledge mining.
        "teacher_role": "weak",
        "loss": {
            "ce": {"weight": 1.0, "label_smoothing": 0.1},
            "wsl": {"weight": 0.5, "temperature": 2.0, "variant": "effdstl"},
            "ckm": {"type": "kd", "weight": 0.0, "temperature": 1.0, "scale_tau2": False, "form": "soft_ce"},
        },
        "target_transform": {"name": "ckm", "teacher_temperature": 0.7, "smoothing": 0.99},
        "events": [
            {
                "name": "switch_teacher",
                "at": 5,
                "checkpoint": "{teacher:main}",
                "model": TEACHERS["main"],
                "optim": {"lr": 0.01, "weight_decay": 0.0},
                "schedule": {"name": "cosine"},
            },
            {"name": "set_loss_weights", "at": 5, "weights": {"ce": 0.0, "wsl": 0.0, "ckm": 1.0}},
        ],
    },
    "dpk": {
        # CE + 0.8·KD + 0.2·MSE(DPK decoder output, teacher map) on the last stage (7×7, patch 1, 49 tokens),
        # π = 1 − minibatch CKA. The ViT is the cheap CIFAR option scaled down further for a CPU: width 128,
        # 2 encoder and 2 decoder blocks (the spec's default is 512 wide, 6 + 6 blocks).
        "loss": {
            "ce": {"weight": 1.0},
            "kd": {"weight": 0.8, "temperature": 4.0},
            "dpk": {
                "weight": 0.2,
                "student": ["stage3"],
                "teacher": ["stage3"],
                "width": 128,
                "heads": 4,
                "encoder_depth": 2,
                "decoder_depth": 2,
                "ratio": "cka",
            },
        },
    },
}


# The comparisons the method issues ask for beyond the ten headline arms (run them with --arms): TST with
# a fixed f_DE (Table 5's "learnable: no"), DKD with β = 2, WSL alone (EffDstl's stage 1 for the whole run,
# from the main teacher), FitNet and DPK with a fixed π (DPK Table 6).
EXTRA_ARMS: dict[str, dict[str, Any]] = {
    "tst_fixed": {**copy.deepcopy(ARMS["tst"]), "events": []},
    # mdistiller's per-pair β for same-family ResNets (the CIFAR recipe of ResNet-56 → ResNet-20).
    "dkd_beta2": {"loss": {"ce": {"weight": 1.0}, "dkd": {**ARMS["dkd"]["loss"]["dkd"], "beta": 2.0}}},
    "wsl": {
        "loss": {
            "ce": {"weight": 1.0, "label_smoothing": 0.1},
            "wsl": {"weight": 0.5, "temperature": 2.0, "variant": "effdstl"},
        }
    },
    "fitnet": {"loss": {"ce": {"weight": 1.0}, "fitnet": {"weight": 100.0}}},  # the CIFAR recipe
    "dpk_fixed": {
        "loss": {**copy.deepcopy(ARMS["dpk"]["loss"]), "dpk": {**ARMS["dpk"]["loss"]["dpk"], "ratio": 0.5}}
    },
}
DEFAULT_ARMS = list(ARMS)
ARMS.update(EXTRA_ARMS)


def set_budget(epochs: int, teacher_epochs: int, train_subset: int) -> None:
    """Rescale the protocol (a quick pipeline check); epoch-based arm settings follow the epoch count."""
    global EPOCHS, TEACHER_EPOCHS, TRAIN_SUBSET
    if epochs < 2:
        raise SystemExit(f"--epochs {epochs}: needs at least 2 (WSL→CKM switches teacher before the end)")
    scale = epochs / EPOCHS
    EPOCHS, TEACHER_EPOCHS, TRAIN_SUBSET = epochs, teacher_epochs, train_subset
    DATA["train_subset"] = train_subset
    tst_at = sorted({min(epochs - 1, max(1, round(a * scale))) for a in ARMS["tst"]["events"][0]["at"]})
    ARMS["tst"]["events"][0]["at"] = tst_at
    for event in ARMS["wsl_ckm"]["events"]:
        event["at"] = min(epochs - 1, max(1, round(event["at"] * scale)))


def base_config(name: str, model: str, epochs: int, data_root: Path) -> dict[str, Any]:
    """What teachers and students share: data, optimizer, schedule."""
    return {
        "name": name,
        "seed": 0,
        "device": "cpu",
        "epochs": epochs,
        "data": {**copy.deepcopy(DATA), "root": str(data_root)},
        "student": {"name": model, "kwargs": GRAY},
        "optim": OPTIM,
        "schedule": SCHEDULE,
        "engine": {"tensorboard": False},
    }


def teacher_config(model: str, data_root: Path) -> dict[str, Any]:
    cfg = base_config(f"fmnist-teacher-{model}", model, TEACHER_EPOCHS, data_root)
    cfg["loss"] = {"ce": {"weight": 1.0}}
    return cfg


def train_teachers(out: Path, data_root: Path, jobs: int, threads: int) -> dict[str, Path]:
    """Train each teacher once; a finished run with the same content hash is re-used."""
    todo, paths = [], {}
    for role, model in TEACHERS.items():
        cfg = teacher_config(model, data_root)
        run_dir = out / "teachers" / f"{model}-{content_hash(cfg, data_root)}"
        paths[role] = run_dir / "last.pt"
        if run_finished(run_dir):
            print(f"teacher {role} ({model}): cached at {run_dir}")
            continue
        recipe = write_yaml(cfg, out / "recipes" / f"teacher_{role}.yaml")
        cmd = [sys.executable, "-m", "datakd", "train", "--config", str(recipe), "--out", str(run_dir)]
        cmd += ["--resume", "auto"]  # continue a partial run, start one that has no checkpoint yet
        todo.append((role, [*cmd, "--quiet"], run_dir))
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        codes = list(
            pool.map(lambda t: run_logged(t[1], out / "logs" / f"teacher_{t[0]}.log", threads), todo)
        )
    for (role, _, run_dir), code in zip(todo, codes):
        if code != 0:
            raise SystemExit(f"teacher {role} failed; see {out / 'logs' / f'teacher_{role}.log'}")
        print(f"teacher {role}: trained in {run_dir}")
    return paths


def arm_recipe(arm: str, out: Path, data_root: Path, teachers: dict[str, Path]) -> tuple[Path, str]:
    spec = copy.deepcopy(ARMS[arm])
    role = spec.pop("teacher_role", "main")
    values = base_config(f"fmnist-{arm}", STUDENT, EPOCHS, data_root)
    mode = "train"
    if arm != "ce":
        values["teacher"] = {"name": TEACHERS[role], "kwargs": GRAY, "checkpoint": str(teachers[role])}
        mode = "distill"
    text = json.dumps(spec).replace("{out}", str(out))
    text = text.replace("{teacher:main}", str(teachers["main"]))
    values.update(json.loads(text))
    return write_yaml(values, out / "recipes" / f"{arm}.yaml"), mode


def fit_tst_encoders(recipe: Path, out: Path, threads: int) -> None:
    """TST Stage I once for all seeds (the file is re-used while its content hash matches)."""
    cmd = [
        sys.executable,
        "-m",
        "datakd",
        "tst",
        "fit",
        "--config",
        str(recipe),
        "--device",
        "cpu",
        "--quiet",
    ]
    if run_logged(cmd, out / "logs" / "tst_fit.log", threads) != 0:
        raise SystemExit(f"TST Stage I failed; see {out / 'logs' / 'tst_fit.log'}")


def summary_of(path: Path) -> dict[str, Any]:
    return json.loads((path.parent / "summary.json").read_text())


def fmt(stat: dict[str, Any] | None, digits: int = 2) -> str:
    if not stat:
        return "–"
    std = stat["std"]
    return (
        f"{stat['mean']:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{stat['mean']:.{digits}f}"
    )


def results_markdown(
    rows: dict[str, dict[str, Any]],
    teachers: dict[str, Path],
    commands: list[str],
    wall: float,
    seeds: list[int],
) -> str:
    base = {
        name: rows[name]["top1_last"]["mean"] for name in ("ce", "kd") if rows.get(name, {}).get("top1_last")
    }
    t_main, t_weak = summary_of(teachers["main"]), summary_of(teachers["weak"])
    lines = [
        "# Fashion-MNIST real-data benchmark (CPU)",
        "",
        "Produced by these invocations into one OUT folder (finished runs are skipped, so each "
        "ran the runs still missing):",
        "",
        "```",
        *commands,
        "```",
        "",
        f"Table written {time.strftime('%Y-%m-%d')} on "
        f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), no GPU; "
        f"{wall / 60:.0f} min of wall time for the runs the last invocation executed.",
        "",
        f"Protocol: Fashion-MNIST 28×28 grayscale, a fixed {TRAIN_SUBSET}-image training subset "
        f"(split_seed 0), evaluated after every epoch on a fixed {TEST_SUBSET}-image subset of the **test** "
        f"split. Student {STUDENT} (zoo, in_channels=1), {EPOCHS} epochs, batch 128, SGD lr 0.1 (Nesterov, "
        f"wd 5e-4), cosine with a half-epoch warm-up, crop+flip; "
        f"seeds {', '.join(map(str, seeds))}. Teacher {TEACHERS['main']} trained once "
        f"with CE for {TEACHER_EPOCHS} epochs on the same subset: top-1 {t_main['top1_last']:.2f} "
        f"(last epoch). WSL→CKM's stage-1 teacher {TEACHERS['weak']}: {t_weak['top1_last']:.2f}. "
        "Per-arm settings: `ARMS` in run.py (the resolved configs are written to OUT/recipes/).",
        "",
        "top-1 is mean ± sample std over seeds; *last* = after the final epoch (the number to quote), "
        "*best* = the best epoch on the test split (optimistic; shown because some papers report it). "
        "img/s = training images per second of one run (one torch thread per run, two runs at a time); "
        "it is a cost indication, not a speed benchmark (use benchmarks/throughput.py for that).",
        "",
        "| arm | seeds | top-1 last | top-1 best | Δ last vs CE | Δ last vs KD | top-5 last | img/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        last = row.get("top1_last")
        delta = {k: (f"{last['mean'] - v:+.2f}" if last else "–") for k, v in base.items()}
        lines.append(
            f"| {name} | {row['n']} | {fmt(last)} | {fmt(row.get('top1_best'))} | {delta.get('ce', '–')} | "
            f"{delta.get('kd', '–')} | {fmt(row.get('top5_last'))} | {fmt(row.get('images_per_sec'), 0)} |"
        )
    missing = [f"{n} (seeds {row['missing_seeds']})" for n, row in rows.items() if row["missing_seeds"]]
    if missing:
        lines += ["", "Not run (yet): " + "; ".join(missing) + "."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-root", default=str(DEFAULT_DATA), help="folder with the Fashion-MNIST IDX files"
    )
    parser.add_argument("--out", default="runs/fmnist-bench", help="work folder (teachers, runs, logs)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--arms",
        default=",".join(DEFAULT_ARMS),
        help=f"arms to run (default: the ten headline arms); any of {', '.join(ARMS)}",
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2, one per core)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--results", default=str(HERE / "RESULTS.md"), help="where to write the table")
    # Changing these leaves the documented protocol (use them for a quick check of the pipeline only).
    parser.add_argument("--epochs", type=int, default=EPOCHS, help=f"student epochs (protocol: {EPOCHS})")
    parser.add_argument("--teacher-epochs", type=int, default=TEACHER_EPOCHS)
    parser.add_argument("--train-subset", type=int, default=TRAIN_SUBSET)
    parser.add_argument(
        "--aggregate-only", action="store_true", help="only rewrite the table from the finished runs"
    )
    args = parser.parse_args()
    set_budget(args.epochs, args.teacher_epochs, args.train_subset)
    started = time.perf_counter()
    data_root, out = Path(args.data_root).resolve(), Path(args.out).resolve()
    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        parser.error(f"unknown arm(s) {', '.join(unknown)}; choose from {', '.join(ARMS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not data_root.is_dir():
        parser.error(f"--data-root {data_root} is not a folder with the Fashion-MNIST files")

    # Every invocation into OUT is kept: the table lists all of them, not only the last.
    log = out / "commands.txt"
    commands = log.read_text().splitlines() if log.is_file() else []
    command = "python benchmarks/fmnist/run.py " + shlex.join(sys.argv[1:])
    if command not in commands and not args.aggregate_only:
        commands.append(command)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text("\n".join(commands) + "\n", log)
    teachers = train_teachers(out, data_root, args.jobs, args.threads)
    recipes = {arm: arm_recipe(arm, out, data_root, teachers) for arm in arms}
    if "tst" in recipes:
        fit_tst_encoders(recipes["tst"][0], out, args.jobs * args.threads)

    runs = {arm: plan(out / "arms" / arm, seeds, []) for arm in arms}
    # Seed-major order: an interrupted benchmark has every arm at the same number of seeds.
    todo: list[tuple[str, SweepRun]] = [
        (arm, runs[arm][i]) for i in range(len(seeds)) for arm in arms if run_state(runs[arm][i]) != "done"
    ]

    def one(item: tuple[str, SweepRun]) -> int:
        arm, run = item
        recipe, mode = recipes[arm]
        t0 = time.perf_counter()
        code = run_logged(
            command_for(run, recipe, mode, [], True), out / "logs" / f"{arm}-seed{run.seed}.log", args.threads
        )
        state = "done" if code == 0 else f"FAILED (exit {code})"
        print(f"{arm} seed {run.seed}: {state} in {time.perf_counter() - t0:.0f} s", flush=True)
        return code

    if args.aggregate_only:
        todo = []
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        codes = list(pool.map(one, todo))

    # The table covers this invocation's arms and every arm an earlier invocation ran into the same OUT.
    shown = [a for a in ARMS if a in arms or (out / "arms" / a).is_dir()]
    rows = {}
    for arm in shown:
        if arm not in recipes:
            recipes[arm] = arm_recipe(arm, out, data_root, teachers)
            runs[arm] = plan(out / "arms" / arm, seeds, [])
        write_results(out / "arms" / arm, recipes[arm][0], recipes[arm][1], runs[arm], [])
        rows[arm] = aggregate(runs[arm])[0]
    text = results_markdown(rows, teachers, commands, time.perf_counter() - started, seeds)
    atomic_write_text(text, Path(args.results))
    print(text)
    return 1 if any(codes) else 0


if __name__ == "__main__":
    raise SystemExit(main())
