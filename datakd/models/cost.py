"""A model's forward cost in FLOPs per image, counted rather than timed.

Timing two models is only comparable on an idle, identical device; a count is the same everywhere, so
`datakd info --model` and the evidence report (EffDstl's teacher inference cost) use this one count.
"""

from __future__ import annotations

import torch
from torch import nn


def forward_flops(model: nn.Module, shape: tuple[int, ...]) -> int:
    """FLOPs (2 × multiply-accumulates) of one forward pass of one image of `shape` (C×H×W), in eval mode.

    Counted by `torch.utils.flop_counter.FlopCounterMode` (convolutions, matmuls); the mode is restored.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *shape))
    finally:
        model.train(was_training)
    return counter.get_total_flops()
