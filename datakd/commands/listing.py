"""`datakd list`: what can be named in a recipe, with one-line descriptions."""

from __future__ import annotations

import argparse

from datakd.augmenters.base import AUGMENTERS
from datakd.commands.base import Command, register_command
from datakd.data.base import DATASETS
from datakd.events.base import EVENTS
from datakd.losses.base import LOSSES
from datakd.registry import Registry, describe
from datakd.targets.base import TARGET_TRANSFORMS

KINDS = ("models", "methods", "datasets", "augmenters", "targets", "events")


def rows(kind: str) -> list[tuple[str, str]]:
    if kind == "models":
        from datakd.models.registry import list_model_names

        return list_model_names()
    registry: Registry = {
        "methods": LOSSES,
        "datasets": DATASETS,
        "augmenters": AUGMENTERS,
        "targets": TARGET_TRANSFORMS,
        "events": EVENTS,
    }[kind]
    return [(name, describe(obj)) for name, obj in registry.items()]


@register_command("list")
class ListCommand(Command):
    """List models, methods (loss terms), datasets, augmenters, target transforms or stage events."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("kind", nargs="?", choices=KINDS, help="what to list (default: all)")

    def run(self, args: argparse.Namespace) -> int:
        kinds = [args.kind] if args.kind else list(KINDS)
        for kind in kinds:
            entries = rows(kind)
            if len(kinds) > 1:
                print(f"{kind}:")
            width = max((len(n) for n, _ in entries), default=0)
            for name, text in entries:
                print(f"  {name:<{width}}  {text}".rstrip())
        return 0
