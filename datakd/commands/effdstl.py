"""`datakd effdstl score|fgsm|trainval`: the analysis of EffDstl §4 (seed 003) as commands.

* `score`: the normalised score (acc − acc⁻)/(acc⁺ − acc⁻) of finished runs (Figs. 5–6).
* `fgsm`: the FGSM probe (Fig. 7) — confidence change under the teacher's FGSM, kept vs manipulated samples.
* `trainval`: training vs validation top-1 of runs side by side (Fig. 8), with the gap.
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from datakd.adversarial import PixelBox
from datakd.commands.base import Command, register_command
from datakd.config import parse_overrides
from datakd.data.build import analysis_split, eval_loader, make_normalizer
from datakd.engine.build import resolve_device
from datakd.errors import DatakdError
from datakd.models.loading import load_model
from datakd.plots.curves import load_rows
from datakd.plots.effdstl import accuracy_curves, draw_fgsm_probe, draw_trainval
from datakd.targets.analysis import (
    fgsm_probe,
    normalized_score,
    run_top1,
    subset_membership,
    summarize_probe,
)
from datakd.targets.subsets import Subset

SPLITS = ("train", "test")


def _add_fgsm_arguments(fgsm: argparse.ArgumentParser) -> None:
    fgsm.add_argument("--teacher", required=True, help="the distillation teacher (makes the FGSM examples)")
    fgsm.add_argument("--student", required=True, help="the student (needed for the regularization atom)")
    fgsm.add_argument("--teacher-model", help="teacher architecture, if the checkpoint lacks it")
    fgsm.add_argument("--student-model", help="student architecture, if the checkpoint lacks it")
    fgsm.add_argument(
        "--probe",
        action="append",
        default=[],
        metavar="NAME=CKPT[:MODEL]",
        help="another network to probe, e.g. undistilled=runs/ce/last.pt (repeatable)",
    )
    fgsm.add_argument("--subset", default="reg&cor", help="the manipulated subset (default reg&cor, as CKM)")
    fgsm.add_argument("--temperature", type=float, default=1.0, help="τ of the subset atoms (default 1)")
    fgsm.add_argument("--epsilon", type=float, default=2 / 255, help="FGSM step in pixel units (2/255)")
    fgsm.add_argument("--samples", type=int, default=1000, help="samples per group (paper: 1000)")
    fgsm.add_argument("--pool", type=int, default=10_000, help="seeded random images to draw groups from")
    fgsm.add_argument("--split", default="train", choices=SPLITS, help="images to probe (no augmentation)")
    fgsm.add_argument("--dataset", required=True, help="dataset name (see `datakd list datasets`)")
    fgsm.add_argument("--data-root", help="folder holding the dataset files")
    fgsm.add_argument(
        "--option", action="append", default=[], metavar="key=value", help="dataset option (repeatable)"
    )
    fgsm.add_argument("--batch-size", type=int, default=128)
    fgsm.add_argument("--seed", type=int, default=0, help="seed of the pool and the group samples")
    fgsm.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    fgsm.add_argument(
        "--out", default="effdstl_fgsm", help="folder for probe.csv, probe.json, fgsm_probe.png"
    )


@register_command("effdstl")
class EffDstl(Command):
    """EffDstl §4 analysis: normalised score, FGSM probe (Fig. 7), train vs validation accuracy (Fig. 8)."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="effdstl_command", metavar="ACTION", required=True)
        score = sub.add_parser(
            "score",
            help="normalised score (acc - acc-)/(acc+ - acc-) of runs (Figs. 5-6)",
            description="Normalised score of each RUN against the weak-only and strong-only base runs, from "
            "each run's summary.json.",
        )
        score.add_argument("runs", nargs="+", metavar="RUN", help="run directories to score")
        score.add_argument("--weak", required=True, help="run distilled from the weak teacher only (acc-)")
        score.add_argument(
            "--strong", required=True, help="run distilled from the strong teacher only (acc+)"
        )
        score.add_argument("--key", default="top1_last", help="summary.json accuracy key (default top1_last)")
        score.add_argument("--json", help="also write the scores to this file")
        fgsm = sub.add_parser(
            "fgsm",
            help="FGSM probe (Fig. 7): confidence change of kept vs manipulated samples",
            description="Split a seeded pool of images into the manipulated subset and the rest (atoms from "
            "the teacher and the student), sample up to --samples of each, make FGSM examples from the "
            "teacher and record every probed network's confidence change on the label.",
        )
        _add_fgsm_arguments(fgsm)
        trainval = sub.add_parser(
            "trainval",
            help="training vs validation top-1 of runs and their gap (Fig. 8)",
            description="Plot train_top1 and test_top1 of each RUN's metrics.csv against epochs, and the "
            "gap.",
        )
        trainval.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
        trainval.add_argument("--label", action="append", help="legend label per run (default: folder name)")
        trainval.add_argument("--out", default="trainval.png", help="the PNG to write")

    def run(self, args: argparse.Namespace) -> int:
        if args.effdstl_command == "score":
            return self.score(args)
        if args.effdstl_command == "trainval":
            return self.trainval(args)
        return self.fgsm(args)

    # ----------------------------------------------------------------- score
    def score(self, args: argparse.Namespace) -> int:
        weak, strong = run_top1(args.weak, args.key), run_top1(args.strong, args.key)
        print(f"acc- {weak:.2f} ({args.weak})   acc+ {strong:.2f} ({args.strong})   [{args.key}]")
        rows = []
        for run in args.runs:
            acc = run_top1(run, args.key)
            value = normalized_score(acc, weak, strong)
            rows.append({"run": run, "top1": acc, "score": value})
            print(f"{value:8.3f}  {acc:6.2f}  {run}")
        if args.json:
            payload = {"key": args.key, "weak": weak, "strong": strong, "runs": rows}
            Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        return 0

    # ----------------------------------------------------------------- trainval
    def trainval(self, args: argparse.Namespace) -> int:
        labels = args.label or [Path(r).name for r in args.runs]
        if len(labels) != len(args.runs):
            raise DatakdError(f"give one --label per run: {len(labels)} labels for {len(args.runs)} runs")
        runs = [(label, load_rows(Path(run))) for label, run in zip(labels, args.runs)]
        for label, rows in runs:
            _, train, val, key = accuracy_curves(rows, f"run {label!r}")
            gap = train[-1] - val[-1]
            print(f"{label}: last epoch train {train[-1]:.2f}  {key} {val[-1]:.2f}  gap {gap:.2f}")
        print(draw_trainval(runs, Path(args.out)))
        return 0

    # ----------------------------------------------------------------- fgsm
    def fgsm(self, args: argparse.Namespace) -> int:
        if args.samples < 1 or args.pool < 1 or args.epsilon < 0:
            raise DatakdError(
                f"--samples and --pool must be >= 1 and --epsilon >= 0, got {args.samples}, {args.pool}, "
                f"{args.epsilon}"
            )
        subset = Subset(args.subset)  # a bad expression fails here, before any model is loaded
        device = resolve_device(args.device)
        cfg, bundle = analysis_split(
            args.dataset,
            args.data_root,
            parse_overrides(args.option),
            args.batch_size,
            args.split,
            size=args.pool,
            seed=args.seed,
        )
        teacher = load_model(args.teacher, bundle.num_classes, args.teacher_model)[0].to(device).eval()
        student = load_model(args.student, bundle.num_classes, args.student_model)[0].to(device).eval()
        networks = {
            "teacher": teacher,
            "student": student,
            **self._probes(args.probe, bundle.num_classes, device),
        }
        for net in networks.values():
            net.requires_grad_(False)
        loader = eval_loader(cfg, bundle, make_normalizer(bundle, device), device)
        chosen = self._choose(loader, teacher, student, subset, args)
        box = PixelBox.from_mean_std(bundle.mean, bundle.std, device)
        records = fgsm_probe(teacher, networks, self._selected(loader, chosen), box, args.epsilon)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "probe.csv", "w", newline="") as handle:
            writer = csv.DictWriter(
                handle, ["index", "manipulated", "network", "clean", "adversarial", "delta"]
            )
            writer.writeheader()
            for r in records:
                writer.writerow({**asdict(r), "delta": r.delta})
        summary = summarize_probe(records)
        settings = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "effdstl_command"}
        (out / "probe.json").write_text(
            json.dumps({"settings": settings, "summary": summary}, indent=2) + "\n"
        )
        for name, groups in summary.items():
            parts = [f"{g} n={v['count']} mean Δ {v['mean_delta']:+.4f} |Δ| {v['mean_abs_delta']:.4f}"
                     for g, v in groups.items()]  # fmt: skip
            print(f"{name}: " + "; ".join(parts))
        print(draw_fgsm_probe(records, out / "fgsm_probe.png"))
        return 0

    @staticmethod
    def _probes(specs: list[str], num_classes: int, device: torch.device) -> dict[str, torch.nn.Module]:
        probes = {}
        for spec in specs:
            name, sep, rest = spec.partition("=")
            if not sep or not name or not rest:
                raise DatakdError(f"--probe expects NAME=CKPT[:MODEL], got {spec!r}")
            path, _, model = rest.partition(":")
            probes[name] = load_model(path, num_classes, model or None)[0].to(device).eval()
        return probes

    @staticmethod
    def _choose(
        loader: Any,
        teacher: torch.nn.Module,
        student: torch.nn.Module,
        subset: Subset,
        args: argparse.Namespace,
    ) -> dict[int, bool]:
        """Dataset index → manipulated?, for up to `samples` seeded picks of each group."""
        indices, members = [], []
        with torch.no_grad():
            for batch in loader:
                member = subset_membership(
                    subset, teacher(batch.images), student(batch.images), batch.labels, args.temperature
                )
                indices.append(batch.indices.cpu())
                members.append(member.cpu())
        index, member = torch.cat(indices), torch.cat(members)
        generator = torch.Generator().manual_seed(args.seed)
        chosen: dict[int, bool] = {}
        for flag in (False, True):
            pool = index[member == flag]
            picked = pool[torch.randperm(len(pool), generator=generator)[: args.samples]]
            chosen.update({int(i): flag for i in picked})
        if not chosen:
            raise DatakdError("the probe found no images (empty pool)")
        return chosen

    @staticmethod
    def _selected(loader: Any, chosen: dict[int, bool]):
        for batch in loader:
            keep = torch.tensor(
                [int(i) in chosen for i in batch.indices.tolist()], device=batch.images.device
            )
            if keep.any():
                idx = batch.indices[keep]
                flags = torch.tensor([chosen[int(i)] for i in idx.tolist()])
                yield batch.images[keep], batch.labels[keep], idx, flags
