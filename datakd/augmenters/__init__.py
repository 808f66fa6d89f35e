"""Augmenters: batch → views (one file each)."""

from datakd.augmenters.base import AUGMENTERS, Augmenter, build_augmenter, register_augmenter

__all__ = ["AUGMENTERS", "Augmenter", "build_augmenter", "register_augmenter"]
