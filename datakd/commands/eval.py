"""`datakd eval`: a checkpoint's test-split metrics (top-1/top-5, COCO mAP or mIoU, by task)."""

from __future__ import annotations

import argparse
import json

from datakd.commands.base import Command, register_command
from datakd.config import DataConfig
from datakd.data.build import eval_loader, load_dataset, make_normalizer
from datakd.engine.build import resolve_device
from datakd.engine.evaluate import evaluate
from datakd.models.loading import load_model


@register_command("eval")
class Eval(Command):
    """Evaluate a checkpoint on a dataset's test split: top-1/top-5, COCO mAP (detection) or mIoU."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--checkpoint", required=True, help="a checkpoint written by datakd (or a state_dict)"
        )
        parser.add_argument("--dataset", required=True, help="dataset name (see `datakd list datasets`)")
        parser.add_argument("--model", help="architecture, when the checkpoint does not record it")
        parser.add_argument("--data-root", help="folder holding the dataset files")
        parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
        parser.add_argument("--batch-size", type=int, default=256)
        parser.add_argument(
            "--option",
            action="append",
            default=[],
            metavar="key=value",
            help="dataset option, e.g. pad_to_32=false (repeatable)",
        )
        parser.add_argument("--quiet", action="store_true")

    def run(self, args: argparse.Namespace) -> int:
        from datakd.config import parse_overrides

        options = dict(parse_overrides(args.option))
        cfg = DataConfig(
            dataset=args.dataset,
            root=args.data_root,
            eval_batch_size=args.batch_size,
            options=options,
            workers=2,
        )
        device = resolve_device(args.device)
        bundle, _ = load_dataset(cfg, seed=0)
        model, source = load_model(args.checkpoint, bundle.num_classes, args.model)
        model = model.to(device)
        task_name = bundle.extra.get("task", "classification")
        if task_name == "classification":
            result = evaluate(
                model,
                eval_loader(cfg, bundle, make_normalizer(bundle, device), device),
                progress=not args.quiet,
            )
        else:
            from datakd.data.dense.loaders import build_dense_loaders
            from datakd.engine.tasks import make_task

            _, evaluator = build_dense_loaders(cfg, bundle, device, 0, 0, 1)
            task = make_task(task_name, bundle)
            result = {"task": task_name} | task.evaluate(model, evaluator, progress=not args.quiet)
        print(
            json.dumps(
                {
                    "checkpoint": args.checkpoint,
                    "model": source["name"],
                    "dataset": args.dataset,
                    "split": "test",
                    "images": len(bundle.test),
                }
                | result
            )
        )
        return 0
