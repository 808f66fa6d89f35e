"""The `datakd` command line: sub-commands come from the command registry (datakd/commands/*)."""

from __future__ import annotations

import argparse
import sys

from datakd import __version__
from datakd.commands.base import COMMANDS
from datakd.engine.preemption import PREEMPTED_EXIT_CODE, Preempted
from datakd.errors import DatakdError
from datakd.faults import cli_fault
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


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, letting `key=value` overrides stand on both sides of flags.

    argparse fills a `nargs="*"` positional from one contiguous run only, so `distill --config r.yaml a=1
    --quiet b=2` would reject `b=2`; such left-over overrides join the command's in command-line order.
    Anything else left over is still an error.
    """
    args, extras = parser.parse_known_args(_bare_resume(sys.argv[1:] if argv is None else argv))
    if extras:
        overrides = getattr(args, "overrides", None)
        if overrides is None or any(e.startswith("-") or "=" not in e for e in extras):
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        args.overrides = [*overrides, *extras]
    return args


def _bare_resume(argv: list[str]) -> list[str]:
    """`--resume` takes an optional `auto`; keep argparse from reading a following key=value as its value."""
    out = list(argv)
    for i, token in enumerate(out):
        if token == "--resume" and (i + 1 == len(out) or out[i + 1] != "auto"):
            out[i] = "--resume=yes"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = _parse(parser, argv)
    if not getattr(args, "_command", None):
        parser.print_help()
        return 2
    try:
        return int(args._command.run(args) or 0)
    except Preempted as stop:
        print(f"datakd {args.command}: {stop}", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    except DatakdError as exc:
        print(f"datakd {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"datakd {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a full disk or memory that escaped the writers and the trainer
        fault = cli_fault(exc)
        if fault is None:
            raise
        print(f"datakd {args.command}: error: {fault}", file=sys.stderr)
        return fault.exit_code


if __name__ == "__main__":
    sys.exit(main())
