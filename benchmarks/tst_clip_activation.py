"""Does TST Stage II gradient-norm clipping ever act? Run a distillation and count the clipped steps.

An older version of the authors' code clipped θ's gradient at norm 10; the pinned commit (f9616a2) does not,
and `augmenter.clip_grad_norm` is off by default here. This runs a recipe with clipping at --clip and
records the pre-clip gradient norm of every Stage II step (torch's clip_grad_norm_ returns it).

    python benchmarks/tst_clip_activation.py --config recipes/tiny/tst.yaml \
        --teacher-checkpoint runs/tiny-tst-teacher/last.pt --out runs/tst-clip
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datakd.config import load_config
from datakd.engine.build import build_trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--teacher-checkpoint", required=True)
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--clip", type=float, default=10.0, help="max gradient norm (authors' old code: 10)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()

    norms: list[float] = []
    original = torch.nn.utils.clip_grad_norm_

    def recording(parameters: Any, max_norm: float, *a: Any, **kw: Any) -> torch.Tensor:
        total = original(parameters, max_norm, *a, **kw)
        norms.append(float(total))
        return total

    torch.nn.utils.clip_grad_norm_ = recording  # the Stage II step looks it up at call time
    overrides = [
        *args.overrides,
        f"augmenter.clip_grad_norm={args.clip}",
        f"teacher.checkpoint={args.teacher_checkpoint}",
        f"out={args.out}",
        "quiet=true",
    ]
    cfg = load_config(args.config, overrides)
    summary = build_trainer(cfg, "distill").fit()
    torch.nn.utils.clip_grad_norm_ = original
    clipped = sum(n > args.clip for n in norms)
    result = {
        "stage2_steps": len(norms),
        "clipped_steps": clipped,
        "clip": args.clip,
        "grad_norm_max": max(norms, default=float("nan")),
        "grad_norm_median": statistics.median(norms) if norms else float("nan"),
        "top1_last": summary["top1_last"],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
