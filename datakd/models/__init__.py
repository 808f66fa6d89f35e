"""Model zoo: CIFAR networks with RepDistiller/mdistiller state-dict keys, and ImageNet models by name."""

from datakd.models.checkpoint_io import load_weights
from datakd.models.registry import (
    MODELS,
    ModelEntry,
    canonical_name,
    create,
    get_entry,
    model_taps,
    register_alias,
    register_model,
)

__all__ = [
    "MODELS",
    "ModelEntry",
    "canonical_name",
    "create",
    "get_entry",
    "load_weights",
    "model_taps",
    "register_alias",
    "register_model",
]
