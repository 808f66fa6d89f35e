"""The `datakd` command line: sub-commands come from the command registry (datakd/commands/*)."""

from __future__ import annotations

import argparse
import sys

from datakd import __version__
from datakd.commands.base import COMMANDS
from datakd.errors import DatakdError
from datakd.registry import describe


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="datakd",
        description="Knowledge distillation for vision models, with the data the teacher shows as a lever.",
    )
    parser.add_argument("--version", action="version", version=f"datakd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, cls in COMMANDS.items():
        command = cls()
        text = cls.help or describe(cls)
        child = sub.add_parser(name, help=text, description=text)
        command.add_arguments(child)
        child.set_defaults(_command=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_command", None):
        parser.print_help()
        return 2
    try:
        return int(args._command.run(args) or 0)
    except DatakdError as exc:
        print(f"datakd {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"datakd {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
