"""`datakd info --model NAME`: parameters, named taps with their shapes, and module paths of a model."""

from __future__ import annotations

import argparse

import torch

from datakd.commands.base import Command, register_command
from datakd.features import feature_shapes
from datakd.models import create, model_taps


@register_command("info")
class Info(Command):
    """Show a model's parameter count, named feature taps (with shapes) and module paths."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model", required=True, help="model name (see `datakd list models`)")
        parser.add_argument("--num-classes", type=int, default=100)
        parser.add_argument("--input", default="3x32x32", help="input shape CxHxW used to report tap shapes")
        parser.add_argument(
            "--modules", action="store_true", help="also list every module path (usable as a tap)"
        )

    def run(self, args: argparse.Namespace) -> int:
        shape = tuple(int(v) for v in args.input.lower().split("x"))
        kwargs = {"in_channels": shape[0]} if shape[0] != 3 else {}
        model = create(args.model, args.num_classes, **kwargs)
        params = sum(p.numel() for p in model.parameters())
        print(f"model {args.model}: {params:,} parameters ({params / 1e6:.4f}M), {args.num_classes} classes")
        taps = model_taps(model)
        shapes = feature_shapes(model, list(taps), torch.zeros(2, *shape)) if taps else {}
        if taps:
            print("named taps:")
            width = max(len(t) for t in taps)
            for tap, path in taps.items():
                print(f"  {tap:<{width}}  {path:<28} {list(shapes[tap])}")
        if args.modules:
            print("module paths:")
            for name, module in model.named_modules():
                if name:
                    print(f"  {name}  ({type(module).__name__})")
        return 0
