"""A model rebuilt from a checkpoint file, and the frozen form every teacher takes.

Used by the engine (the run's teacher, `switch_teacher`), by target transforms that need a second teacher
(EffDstl's replacement) and by commands (`eval`, `cka`), so it lives with the models, below all of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from datakd.checkpoint import load_checkpoint
from datakd.errors import DatakdError
from datakd.models.checkpoint_io import load_weights
from datakd.models.registry import create


def load_model(
    checkpoint: str | Path, num_classes: int, name: str | None = None, kwargs: dict[str, Any] | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """A model rebuilt from one of our checkpoints (its name is stored there) or any state_dict + `name`."""
    state = load_checkpoint(checkpoint)
    model_name = name or state.get("model_name")
    if not model_name:
        raise DatakdError(
            f"checkpoint {str(checkpoint)!r} does not record its architecture; give the model name "
            "(e.g. teacher.name=resnet56)"
        )
    model_kwargs = dict(state.get("model_kwargs") or {})
    model_kwargs.update(kwargs or {})
    stored_classes = state.get("num_classes", num_classes)
    if stored_classes != num_classes:
        raise DatakdError(
            f"checkpoint {str(checkpoint)!r} was trained for {stored_classes} classes but this "
            f"dataset has {num_classes}"
        )
    model = create(model_name, num_classes, **model_kwargs)
    try:
        load_weights(model, state)
    except DatakdError as exc:
        stored = state.get("model_name")
        valid = (
            f"the architecture it was trained as ({stored!r}: drop the name override)"
            if stored
            else ("the name of the architecture it was trained as")
        )
        raise DatakdError(f"checkpoint {str(checkpoint)!r}: {exc}; valid: {valid}") from None
    return model, {"checkpoint": str(checkpoint), "name": model_name, "kwargs": model_kwargs}


def freeze_teacher(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    """Teachers are always in eval mode and never receive gradients, unless a method says otherwise."""
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.eval()
    model.requires_grad_(False)
    return model
