"""`datakd train` and `datakd distill`: run a recipe (with key=value overrides) to its last epoch."""

from __future__ import annotations

import argparse
import json

from datakd.api import distributed as D
from datakd.commands.base import Command, add_run_flags, flag_overrides, register_command
from datakd.config import load_config
from datakd.engine.build import build_trainer


class _RunCommand(Command):
    mode = "train"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config", required=True, help="recipe YAML file")
        parser.add_argument(
            "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=0.1"
        )
        add_run_flags(parser)
        if self.mode == "distill":
            parser.add_argument("--teacher-checkpoint", help="checkpoint of the trained teacher")

    def run(self, args: argparse.Namespace) -> int:
        cfg = load_config(args.config, list(args.overrides) + flag_overrides(args))
        D.init_from_env("cuda" if cfg.device.startswith("cuda") else "cpu")
        try:
            trainer = build_trainer(cfg, self.mode, resume=args.resume, overwrite=args.overwrite)
            summary = trainer.fit()
        finally:
            D.shutdown()
        if trainer.is_main:
            metric = summary.get("task_metric", "top1")  # map / miou for detection / segmentation
            keys = (f"{metric}_last", f"{metric}_best")
            keys += ("top5_last",) if metric == "top1" else ()
            keys += ("epochs", "images_per_sec", "wall_seconds")
            print(json.dumps({k: summary[k] for k in keys} | {"run_dir": str(trainer.run_dir)}))
        return 0


@register_command("train")
class Train(_RunCommand):
    """Train a model with its labels only (e.g. a teacher)."""

    mode = "train"


@register_command("distill")
class Distill(_RunCommand):
    """Distil a student from a trained teacher with the recipe's loss terms, augmenter and events."""

    mode = "distill"
