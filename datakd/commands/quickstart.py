"""`datakd quickstart`: teacher → student (CE) and student (KD) on embedded real data, in minutes on a CPU."""

from __future__ import annotations

import argparse
from pathlib import Path

from datakd.commands.base import Command, add_resume_flags, register_command
from datakd.quickstart import format_table, run_quickstart


@register_command("quickstart")
class Quickstart(Command):
    """A student with CE and with KD from the shipped (or a freshly trained) teacher; print the table."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--out", default="runs/quickstart", help="output folder (default: runs/quickstart)"
        )
        parser.add_argument(
            "--data-root", help="run the same protocol on the Fashion-MNIST IDX files found here"
        )
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument(
            "--epochs", type=int, help="epochs of every stage (default: teacher 15, students 6)"
        )
        parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
        add_resume_flags(parser)
        parser.add_argument(
            "--train-teacher",
            action="store_true",
            help="train the teacher too instead of using the one shipped in the package",
        )
        parser.add_argument("--quiet", action="store_true")

    def run(self, args: argparse.Namespace) -> int:
        out = Path(args.out)
        results = run_quickstart(
            out,
            args.seed,
            args.device,
            args.data_root,
            args.epochs,
            args.quiet,
            bool(args.resume),
            args.overwrite,
            args.train_teacher,
        )
        print(format_table(results))
        print(f"results written to {out / 'results.json'}")
        return 0
