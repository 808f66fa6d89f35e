"""`datakd data`: dataset utilities; `datakd data scenes` writes the detection/segmentation test bed."""

from __future__ import annotations

import argparse

from datakd.commands.base import Command, register_command
from datakd.data.dense.scenes import generate_scenes


@register_command("data")
class DataCommand(Command):
    """Dataset utilities: `scenes` composes Fashion-MNIST objects into a COCO + Cityscapes test bed."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
        scenes = sub.add_parser(
            "scenes",
            help="write the scenes test bed (COCO and Cityscapes layouts, MANIFEST.sha256)",
            description="Compose Fashion-MNIST objects into textured canvases with boxes, instance masks "
            "and label maps, in the COCO 2017 and Cityscapes layouts; same seed, same bytes.",
        )
        scenes.add_argument("--source", required=True, help="folder with the Fashion-MNIST IDX .gz files")
        scenes.add_argument("--out", required=True, help="output folder (new or empty)")
        scenes.add_argument("--train", type=int, default=2000, help="training canvases (default 2000)")
        scenes.add_argument("--val", type=int, default=500, help="validation canvases (default 500)")
        scenes.add_argument("--size", type=int, default=96, help="canvas side in pixels (default 96)")
        scenes.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
        scenes.add_argument(
            "--overwrite", action="store_true", help="replace a test bed already written in --out"
        )

    def run(self, args: argparse.Namespace) -> int:
        return run_scenes(args)


def run_scenes(args: argparse.Namespace) -> int:
    """Generate the test bed and print what was written."""
    summary = generate_scenes(
        args.source, args.out, args.train, args.val, args.size, args.seed, overwrite=args.overwrite
    )
    print(
        f"scenes: {summary.canvases['train']} train / {summary.canvases['val']} val canvases of "
        f"{args.size}x{args.size} px, {summary.objects['train']} / {summary.objects['val']} objects, "
        f"written to {summary.out} in {summary.seconds:.1f} s (MANIFEST.sha256 lists every file)"
    )
    return 0
