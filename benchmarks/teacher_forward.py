"""Teacher forward alone, eager vs torch.compile vs torch.compile with inductor freezing (a speed probe).

The teacher's no-grad forward is about half of a KD step on the CPU. Freezing lets inductor treat the frozen
teacher's weights as constants (folding batch norm, pre-packing convolution weights); datakd does not use it
yet, because a graph with constant weights would silently keep stale weights if anything changed them. This
script measures what it would buy, with and without channels-last memory (each variant's largest logit error
against a float64 forward beside its speed), so the choice rests on a number:

    OMP_NUM_THREADS=1 python benchmarks/teacher_forward.py --model resnet56
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch._inductor.config as inductor_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datakd.models import create


def images_per_sec(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, steps: int) -> float:
    """Steady-state images/s of `forward` on `x` (two untimed calls first: they include compiling)."""
    with torch.no_grad():
        for _ in range(2):
            forward(x)
        start = time.perf_counter()
        for _ in range(steps):
            forward(x)
    return steps * x.shape[0] / (time.perf_counter() - start)


def relative_error(logits: torch.Tensor, exact: torch.Tensor) -> float:
    """Largest logit error relative to the largest float64 logit (the precision price of a variant)."""
    return float((logits.double() - exact.double()).abs().max() / exact.double().abs().max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="resnet56")
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = create(args.model, num_classes=args.num_classes).eval().requires_grad_(False)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    with torch.no_grad():
        reference = model(x)
    result: dict[str, float | int | str] = {"model": args.model, "threads": torch.get_num_threads()}
    with torch.no_grad():
        exact = model.double()(x.double())  # kept in float64: the reference the errors are measured against
    model.float()
    result["eager_images_per_sec"] = images_per_sec(model, x, args.steps)
    result["eager_max_relative_error"] = relative_error(reference, exact)
    for memory in ("contiguous", "channels_last"):
        fmt = torch.channels_last if memory == "channels_last" else torch.contiguous_format
        model = model.to(memory_format=fmt)
        xm = x.contiguous(memory_format=fmt)
        prefix = "" if memory == "contiguous" else "channels_last_"
        if memory == "channels_last":
            result["channels_last_eager_images_per_sec"] = images_per_sec(model, xm, args.steps)
            with torch.no_grad():
                result["channels_last_eager_max_relative_error"] = relative_error(model(xm), exact)
        for name, freezing in (("compiled", False), ("frozen", True)):
            torch._dynamo.reset()
            with inductor_config.patch(freezing=freezing):
                compiled = torch.compile(model, dynamic=False)
                result[f"{prefix}{name}_images_per_sec"] = images_per_sec(compiled, xm, args.steps)
                with torch.no_grad():
                    result[f"{prefix}{name}_max_relative_error"] = relative_error(compiled(xm), exact)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
