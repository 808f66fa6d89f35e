"""Seeded, class-stratified carving of a split: a validation hold-out or a smaller subset.

Tuning on the test split leaks it into the results, so a validation split is held out of train instead;
subsets make quick runs cheaper. Both keep class proportions (largest-remainder allocation, ties broken
by the seed), so a small hold-out still covers the classes it can, and the same seed always gives the
same indices for the same labels, whether the split is in memory or a list of files.
"""

from __future__ import annotations

import torch

from datakd.data.base import Split
from datakd.errors import DatakdError


def stratified_indices(labels: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick `n` indices with class proportions kept; returns (picked, rest), each sorted ascending."""
    generator = torch.Generator().manual_seed(seed)
    total = int(labels.numel())
    classes, counts = torch.unique(labels, return_counts=True)
    quota = counts * n // total  # exact integer floor of n * share
    remainder = counts * n % total
    short = n - int(quota.sum())
    if short:
        # Classes with the largest remainder get one more; a seeded permutation breaks ties.
        tie_break = torch.randperm(len(classes), generator=generator)
        order = sorted(range(len(classes)), key=lambda c: (-int(remainder[c]), int(tie_break[c])))
        quota[order[:short]] += 1
    picked = []
    for cls, k in zip(classes.tolist(), quota.tolist()):
        members = torch.nonzero(labels == cls).flatten()
        picked.append(members[torch.randperm(len(members), generator=generator)[:k]])
    chosen = torch.zeros(total, dtype=torch.bool)
    chosen[torch.cat(picked)] = True
    return torch.nonzero(chosen).flatten(), torch.nonzero(~chosen).flatten()


def make_validation_split(split: Split, val_size: int, seed: int) -> tuple[Split, Split]:
    """Hold `val_size` items out of `split` (stratified, seeded); returns (train, val)."""
    if not 0 < val_size < len(split):
        raise DatakdError(
            f"validation size {val_size} must be between 1 and {len(split) - 1} "
            f"(the split has {len(split)} items)"
        )
    val, train = stratified_indices(split.labels, val_size, seed)
    return split.subset(train), split.subset(val)


def take_subset(split: Split, n: int, seed: int) -> Split:
    """A stratified, seeded subset of `n` items of `split`, in their original order."""
    if not 0 < n <= len(split):
        raise DatakdError(f"subset size {n} must be between 1 and {len(split)} (the split's size)")
    picked, _ = stratified_indices(split.labels, n, seed)
    return split.subset(picked)


def subset_then_validation(split: Split, subset: int | None, val_size: int, seed: int) -> tuple[Split, Split]:
    """(subset, validation): the subset `take_subset(split, subset, seed)` picks, and `val_size` items held
    out of the rest with the same seed, so a search can validate on images the subset's runs never see."""
    if not subset or not val_size:
        raise DatakdError("data.val_outside_subset needs both data.train_subset and data.val_size")
    if not 0 < subset < len(split):
        raise DatakdError(f"subset size {subset} must be between 1 and {len(split) - 1} (the split's size)")
    picked, rest = stratified_indices(split.labels, subset, seed)
    _, val = make_validation_split(split.subset(rest), val_size, seed=seed)
    return split.subset(picked), val
