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
        add_resume_flags(parser)
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


def add_resume_flags(parser: argparse.ArgumentParser) -> None:
    """--resume [auto] (args.resume: False, True or "auto") and --overwrite (see datakd.engine.rundir)."""
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        type=_resume_value,
        metavar="auto",
        help="continue the run in --out from its last.pt; with `auto`, start fresh when there is none "
        "(one command for the first start and every requeue)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="delete the run already in --out and start again"
    )


def _resume_value(text: str) -> bool | str:
    if text == "auto":
        return "auto"
    if text == "yes":  # what a bare --resume becomes (datakd.cli._bare_resume)
        return True
    raise argparse.ArgumentTypeError(f"{text!r} is not a resume mode; valid: --resume, --resume auto")
