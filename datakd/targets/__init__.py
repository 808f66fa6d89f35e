"""Target transforms: per-sample rewriting of the teacher's soft targets."""

from datakd.targets.base import (
    TARGET_TRANSFORMS,
    TargetInputs,
    TargetTransform,
    build_target_transform,
    register_target_transform,
)

__all__ = [
    "TARGET_TRANSFORMS",
    "TargetInputs",
    "TargetTransform",
    "build_target_transform",
    "register_target_transform",
]
