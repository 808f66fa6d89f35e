"""A PBA population member's run, as plain data: the shared recipe, the reduced split and the member's seed.

Both sides of a search use it: the driver (`datakd.pba.search`, no Ray needed to prepare a search) and the
Ray Tune trainable (`datakd.pba.trainable`, imported only when Ray is installed).
"""

from __future__ import annotations

import copy
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from datakd.config import RunConfig, config_from_dict
from datakd.data.loaders import derive_seed
from datakd.errors import DatakdError

REWARD = "val_acc"


@dataclass
class TrialSpec:
    """Everything a population member needs to build its run (plain data, shipped to Ray workers)."""

    mode: str
    base: dict[str, Any]
    epochs: int
    train_size: int
    val_size: int
    split_seed: int
    cutout: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrialSpec:
        return cls(**values)

    def trial_config(self, policy: list[int], seed: int, run_dir: Path) -> RunConfig:
        """The recipe as one member: reduced split, fixed policy, search length (LR milestones and stage
        events rescaled by the epoch-scaling rule), the member's seed, quiet and checkpoint-light."""
        values = copy.deepcopy(self.base)
        schedule = values.setdefault("schedule", {})
        scale = float(schedule.get("scale", 1.0))
        recipe_epochs = round(values["epochs"] * scale)
        schedule["scale"] = scale * self.epochs / recipe_epochs
        data = values.setdefault("data", {})
        data.update(
            val_size=self.val_size, train_subset=self.train_size, test_subset=None, split_seed=self.split_seed
        )
        values["augmenter"] = {"name": "pba", "policy": list(policy), "cutout": self.cutout}
        values.update(seed=seed, out=str(run_dir), quiet=True, name=f"{values.get('name', 'run')}-pba")
        engine = values.setdefault("engine", {})
        engine.update(tensorboard=False, save_best=False, eval_every=1, checkpoint_every_iters=0)
        engine["preempt_signals"] = []  # Ray owns its member processes' signals (SIGTERM stops actors)
        cfg = config_from_dict(values)
        if cfg.total_epochs != self.epochs:
            raise DatakdError(f"search length {self.epochs} became {cfg.total_epochs} epochs after rescaling")
        return cfg


def member_seed(split_seed: int, trial_id: str) -> int:
    """A population member's own seed (model init, data order, augmentation draws), from its trial id.

    It stays the member's after an exploit (PBT copies the donor's config, not its identity), so members
    keep independent randomness while sharing one split (``data.split_seed``).
    """
    return derive_seed(split_seed, zlib.crc32(trial_id.encode())) % (2**31)
