"""`datakd plot KIND RUN_DIR`: write a figure of a run (see `datakd plot --help` for the kinds)."""

from __future__ import annotations

import argparse
from pathlib import Path

from datakd.commands.base import Command, register_command
from datakd.errors import DatakdError
from datakd.plots.base import PLOTS
from datakd.registry import describe


@register_command("plot")
class Plot(Command):
    """Plot a run: training curves or a method's own figure (tst, dpk, pick, pba, ...); `all` for each."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        kinds = "; ".join(f"{name}: {describe(fn)}" for name, fn in PLOTS.items())
        parser.add_argument("kind", help=f"all, or one of: {kinds}")
        parser.add_argument("run_dir", help="a run directory")
        parser.add_argument("--out", help="folder for the PNGs (default: RUN_DIR/plots)")

    def run(self, args: argparse.Namespace) -> int:
        run_dir = Path(args.run_dir)
        out = Path(args.out) if args.out else run_dir / "plots"
        names = PLOTS.names() if args.kind == "all" else [args.kind]
        written = []
        for name in names:
            fn = PLOTS.get(name)
            try:
                written += fn(run_dir, out)
            except DatakdError:  # `all` skips figures whose data this run does not have
                if args.kind != "all":
                    raise
        for path in written:
            print(path)
        return 0
