"""The sub-command registry of the `datakd` CLI: one module per command, discovered automatically."""

from __future__ import annotations

import argparse
from typing import ClassVar

from datakd.registry import Registry


class Command:
    """A sub-command: `help` is its one-line description; `add_arguments` and `run` do the work."""

    help: ClassVar[str] = ""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare the command's arguments."""

    def run(self, args: argparse.Namespace) -> int:  # pragma: no cover - abstract
        raise NotImplementedError


COMMANDS: Registry[type[Command]] = Registry("command", packages=("datakd.commands",))


def register_command(name: str):
    return COMMANDS.register(name)


def add_run_flags(parser: argparse.ArgumentParser, resume: bool = True) -> None:
    """The flags shared by train, distill and eval; they override the recipe."""
    parser.add_argument("--out", help="run directory (default: runs/<name>/seed<seed>)")
    parser.add_argument("--data-root", help="folder holding the dataset files")
    parser.add_argument("--epochs", type=int, help="number of epochs (before schedule.scale)")
    parser.add_argument("--seed", type=int, help="random seed")
    parser.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    if resume:
        parser.add_argument(
            "--resume", action="store_true", help="continue the run in --out from its last.pt"
        )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """Translate the common flags into config overrides (applied after the recipe's key=value list)."""
    out = []
    for flag, key in (
        ("out", "out"),
        ("data_root", "data.root"),
        ("epochs", "epochs"),
        ("seed", "seed"),
        ("device", "device"),
        ("teacher_checkpoint", "teacher.checkpoint"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            out.append(f"{key}={value}")
    if getattr(args, "quiet", False):
        out.append("quiet=true")
    return out
