"""`datakd sweep` and `datakd report`: multi-seed experiments and the paper-vs-ours comparison."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from datakd.commands.base import Command, register_command
from datakd.config import load_config
from datakd.report import report_table
from datakd.sweep import execute, parse_grid, plan, write_results


@register_command("sweep")
class Sweep(Command):
    """Run a recipe over seeds and grid points (skipping finished runs, resuming partial ones); aggregate."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--recipe", required=True, help="recipe YAML file")
        parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides for every run")
        parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
        parser.add_argument(
            "--grid",
            action="append",
            default=[],
            metavar="key=v1,v2",
            help="a grid axis (repeatable; the sweep runs the product)",
        )
        parser.add_argument("--out", help="sweep directory (default: sweeps/<recipe name>)")
        parser.add_argument(
            "--mode",
            choices=("auto", "train", "distill"),
            default="auto",
            help="auto: distill when the recipe names a teacher checkpoint",
        )
        parser.add_argument("--teacher-checkpoint", help="teacher for every run (overrides the recipe)")
        parser.add_argument(
            "--aggregate-only", action="store_true", help="only (re)write sweep.json/sweep.md"
        )
        parser.add_argument("--verbose", action="store_true", help="show each run's progress")

    def run(self, args: argparse.Namespace) -> int:
        recipe = Path(args.recipe)
        overrides = list(args.overrides)
        if args.teacher_checkpoint:
            overrides.append(f"teacher.checkpoint={args.teacher_checkpoint}")
        cfg = load_config(recipe, overrides)
        mode = args.mode if args.mode != "auto" else ("distill" if cfg.teacher.checkpoint else "train")
        out = Path(args.out or Path("sweeps") / cfg.name)
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        runs = plan(out, seeds, parse_grid(args.grid))
        for run in runs:  # validate every grid point's config before spending compute
            load_config(recipe, overrides + run.overrides)
        if not args.aggregate_only:
            gpus = [str(i) for i in range(torch.cuda.device_count())] if cfg.device != "cpu" else []
            execute(runs, recipe, mode, overrides, gpus, quiet=not args.verbose)
        result = write_results(out, recipe, mode, runs, overrides)
        print((out / "sweep.md").read_text())
        print(
            json.dumps(
                {"sweep": str(out), "runs": len(runs), "finished": sum(p["n"] for p in result["points"])}
            )
        )
        return 0


@register_command("report")
class Report(Command):
    """Ours vs the papers' numbers for every sweep under a directory; recipes never run are marked."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("sweep_dir", help="a sweep directory, or a folder holding several")
        parser.add_argument(
            "--recipes",
            action="append",
            default=[],
            help="recipe folder(s) whose paper rows should appear even if never run",
        )

    def run(self, args: argparse.Namespace) -> int:
        print(report_table(Path(args.sweep_dir), [Path(r) for r in args.recipes]))
        return 0
