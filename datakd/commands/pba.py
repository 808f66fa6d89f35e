"""`datakd pba`: learn PBA augmentation schedules (role-wise KD) and convert PBA's own policy logs.

* ``datakd pba search --role teacher|student --config RECIPE [--address ray://HEAD:10001] ...``
  runs Population Based Augmentation on Ray Tune and writes ``OUT/schedule.json``;
* ``datakd pba convert LOG --epochs N --out schedule.json`` turns a PBA/role-kd ``pbt_policy_*.txt`` log
  into a schedule file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from datakd.commands.base import Command, register_command
from datakd.config import load_config


def _gpus_default() -> float:
    import torch

    return 0.25 if torch.cuda.is_available() else 0.0


@register_command("pba")
class PBA(Command):
    """Search PBA augmentation schedules for a teacher or a distilled student on Ray Tune (role-wise KD)."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="pba_command", metavar="ACTION", required=True)
        search = sub.add_parser("search", help="run a PBA search and write its schedule (needs datakd[pba])")
        search.add_argument("--role", required=True, choices=("teacher", "student"), help="whose schedule")
        search.add_argument("--config", required=True, help="recipe of the runs to search with")
        search.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides")
        search.add_argument("--out", help="output folder (default: runs/pba-search/<recipe name>-<role>)")
        search.add_argument("--address", help="Ray cluster to use (ray://HOST:10001 or auto); default: local")
        search.add_argument("--population", type=int, default=16, help="population size (default 16)")
        search.add_argument("--epochs", type=int, help="epochs of each member (default: the recipe's)")
        search.add_argument("--train-size", type=int, default=4000, help="reduced training split (4000)")
        search.add_argument("--val-size", type=int, help="validation images (default: the rest of train)")
        search.add_argument("--perturbation-interval", type=int, default=3, help="epochs between exploits")
        search.add_argument("--quantile", type=float, default=0.25, help="PBT truncation fraction (0.25)")
        search.add_argument(
            "--search-cutout", type=int, default=0, help="final Cutout side during the search (0, role-kd)"
        )
        search.add_argument("--seed", type=int, default=0, help="seed of the split, members and explore")
        search.add_argument("--teacher-checkpoint", help="Stage-α teacher (role student)")
        search.add_argument("--data-root", help="folder holding the dataset files")
        search.add_argument("--device", help="device of each member (auto, cpu, cuda)")
        search.add_argument("--cpus-per-trial", type=float, default=1.0, help="Ray CPUs per member (1)")
        search.add_argument(
            "--gpus-per-trial", type=float, help="Ray GPUs per member (default 0.25 with CUDA here, else 0)"
        )
        search.add_argument("--num-cpus", type=int, help="CPUs of a local Ray instance (default: all)")
        search.add_argument(
            "--synch", action="store_true", help="synchronous PBT (all members reach each interval first)"
        )
        search.add_argument(
            "--max-failures",
            type=int,
            default=2,
            help="restarts of a crashed member from its last checkpoint (2); rerunning the same command "
            "after the driver was killed resumes the search",
        )
        search.add_argument("--quiet", action="store_true", help="no Ray progress output")
        convert = sub.add_parser("convert", help="PBA pbt_policy_*.txt log -> datakd schedule JSON")
        convert.add_argument("log", help="a PBA/role-kd pbt_policy_<trial>.txt file")
        convert.add_argument("--epochs", type=int, required=True, help="length of the search that wrote it")
        convert.add_argument("--out", required=True, help="schedule JSON to write")

    def run(self, args: argparse.Namespace) -> int:
        if args.pba_command == "convert":
            from datakd.augmenters.pba_policy import Schedule

            path = Schedule.from_pba_log(args.log, args.epochs).save(args.out)
            print(path)
            return 0
        from datakd.pba.search import prepare_spec, run_search

        overrides = list(args.overrides)
        for flag, key in (
            ("teacher_checkpoint", "teacher.checkpoint"),
            ("data_root", "data.root"),
            ("device", "device"),
        ):
            value = getattr(args, flag)
            if value is not None:
                overrides.append(f"{key}={value}")
        cfg = load_config(args.config, overrides)
        spec = prepare_spec(
            cfg, args.role, args.epochs, args.train_size, args.val_size, args.seed, args.search_cutout
        )
        out = Path(args.out) if args.out else Path("runs") / "pba-search" / f"{cfg.name}-{args.role}"
        summary = run_search(
            spec,
            out,
            population=args.population,
            perturbation_interval=args.perturbation_interval,
            quantile=args.quantile,
            seed=args.seed,
            address=args.address,
            cpus_per_trial=args.cpus_per_trial,
            gpus_per_trial=_gpus_default() if args.gpus_per_trial is None else args.gpus_per_trial,
            num_cpus=args.num_cpus,
            synch=args.synch,
            quiet=args.quiet,
            max_failures=args.max_failures,
            meta={"recipe": str(Path(args.config).resolve()), "overrides": overrides},
        )
        best = summary["best"]
        print(json.dumps({"schedule": str(out / "schedule.json"), "best_val_acc": best["val_acc"]}))
        return 0
