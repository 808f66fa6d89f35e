"""`datakd cka`: minibatch CKA between a student's and one or more teachers' stage features on a dataset.

The paper's Fig. 5/9 (feature similarity before/after distillation) and its "which teacher" use: the
teacher whose features are closest to the student's (highest CKA) gives the smallest feature gap. CKA is
the minibatch estimate of DPK Eq. 7: the three unbiased HSIC terms are averaged over all batches of
`--batch-size` images (the paper: 12,800 ImageNet validation images in batches of 32), then combined;
each batch's own CKA is kept in the `--json` output (the values the paper ranks into heat maps).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from datakd.api.features import FeatureRecorder, stage_taps
from datakd.commands.base import Command, register_command
from datakd.config import parse_overrides
from datakd.data.build import analysis_split, eval_loader, make_normalizer
from datakd.engine.build import resolve_device
from datakd.errors import DatakdError
from datakd.metrics import MIN_SAMPLES, MinibatchCKA, gram_linear
from datakd.models.loading import load_model

SPLITS = ("test", "train")


def _taps(text: str | None, model: nn.Module, which: str) -> list[str]:
    taps = [t.strip() for t in text.split(",") if t.strip()] if text else stage_taps(model)
    if not taps:
        raise DatakdError(f"the {which} has no named stage taps; list them with --{which}-taps")
    return taps


def _grams(model: nn.Module, taps: list[str], images: torch.Tensor) -> dict[str, torch.Tensor]:
    with FeatureRecorder(model, taps) as recorder:
        _, features = recorder.forward(images)
    return {tap: gram_linear(features[tap]) for tap in taps}


@register_command("cka")
class CKA(Command):
    """Minibatch CKA between student and teacher stage features (DPK Fig. 5/9: which teacher is closest)."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--student", required=True, help="student checkpoint")
        parser.add_argument(
            "--teacher", required=True, action="append", help="teacher checkpoint (repeat to compare several)"
        )
        parser.add_argument("--student-model", help="student architecture, if the checkpoint lacks it")
        parser.add_argument("--teacher-model", help="teacher architecture, if the checkpoints lack it")
        parser.add_argument("--dataset", required=True, help="dataset name (see `datakd list datasets`)")
        parser.add_argument("--data-root", help="folder holding the dataset files")
        parser.add_argument("--split", default="test", choices=SPLITS, help="images to use (no augmentation)")
        parser.add_argument("--samples", type=int, help="a seeded random subset of this many images")
        parser.add_argument("--batch-size", type=int, default=32, help="minibatch of the CKA estimate (≥ 4)")
        parser.add_argument("--student-taps", help="comma-separated taps (default: all stageN taps)")
        parser.add_argument("--teacher-taps", help="comma-separated taps (default: all stageN taps)")
        parser.add_argument(
            "--option", action="append", default=[], metavar="key=value", help="dataset option (repeatable)"
        )
        parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
        parser.add_argument("--json", help="also write the matrices and per-batch values to this file")
        parser.add_argument("--quiet", action="store_true", help="no progress bar")

    def run(self, args: argparse.Namespace) -> int:
        if args.batch_size < MIN_SAMPLES:
            raise DatakdError(
                f"--batch-size must be at least {MIN_SAMPLES} (unbiased HSIC), got {args.batch_size}"
            )
        device = resolve_device(args.device)
        cfg, bundle = analysis_split(
            args.dataset,
            args.data_root,
            parse_overrides(args.option),
            args.batch_size,
            args.split,
            size=args.samples,
            seed=0,
        )
        student, _ = load_model(args.student, bundle.num_classes, args.student_model)
        student = student.to(device).eval()
        teachers = [load_model(path, bundle.num_classes, args.teacher_model)[0].to(device).eval()
                    for path in args.teacher]  # fmt: skip
        s_taps = _taps(args.student_taps, student, "student")
        t_taps = [_taps(args.teacher_taps, t, "teacher") for t in teachers]
        meters = [{(tt, st): MinibatchCKA() for tt in taps for st in s_taps} for taps in t_taps]
        skipped = 0
        loader = eval_loader(cfg, bundle, make_normalizer(bundle, device), device)
        with torch.no_grad():
            for batch in tqdm(loader, desc="cka", leave=False, disable=args.quiet, dynamic_ncols=True):
                if len(batch) < MIN_SAMPLES:
                    skipped += 1
                    continue
                s_grams = _grams(student, s_taps, batch.images)
                for teacher, taps, meter in zip(teachers, t_taps, meters):
                    t_grams = _grams(teacher, taps, batch.images)
                    for (tt, st), m in meter.items():
                        m.update_grams(t_grams[tt], s_grams[st])
        report = self.report(args, s_taps, t_taps, meters, skipped)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        return 0

    def report(
        self,
        args: argparse.Namespace,
        s_taps: list[str],
        t_taps: list[list[str]],
        meters: list[dict[tuple[str, str], MinibatchCKA]],
        skipped: int,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"student": args.student, "student_taps": s_taps, "teachers": []}
        width = max(len(t) for taps in t_taps for t in taps) + 2
        ranking = []
        for path, taps, meter in zip(args.teacher, t_taps, meters):
            batches = next(iter(meter.values())).batches
            print(
                f"CKA (minibatch, {batches} batches of {args.batch_size}) "
                f"teacher {path} vs student {args.student}"
            )
            print(" " * width + "".join(f"{st:>10}" for st in s_taps))
            matrix = []
            for tt in taps:
                row = [meter[(tt, st)].value() for st in s_taps]
                matrix.append(row)
                print(f"{tt:<{width}}" + "".join(f"{v:>10.4f}" for v in row))
            paired = [meter[(tt, st)].value() for tt, st in zip(taps, s_taps)]
            mean = sum(paired) / len(paired)
            ranking.append((mean, path))
            out["teachers"].append(
                {
                    "checkpoint": path,
                    "teacher_taps": taps,
                    "matrix": matrix,
                    "paired_mean": mean,
                    "per_batch": {f"{tt}|{st}": meter[(tt, st)].per_batch for tt, st in zip(taps, s_taps)},
                }
            )
        if len(ranking) > 1:
            print("teachers by mean CKA of paired stages (higher = closer to the student):")
            for mean, path in sorted(ranking, reverse=True):
                print(f"  {mean:.4f}  {path}")
        if skipped:
            print(f"({skipped} trailing batch(es) of fewer than {MIN_SAMPLES} images skipped)")
        out["skipped_batches"] = skipped
        return out
