"""The Ray Tune trainable of a PBA search: one population member, one datakd Trainer, one epoch per step.

Exploit (PBT copies a better member) is `save_checkpoint` / `load_checkpoint` of the Trainer's full state
plus the member's policy history; explore changes ``config["policy"]``, which the restarted member applies
from its next epoch. The history therefore always holds the policy that trained each epoch of the weights
the member carries, and the best member's final history is the learned schedule.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from ray import tune

from datakd.checkpoint import atomic_save, atomic_write_text
from datakd.data.loaders import derive_seed
from datakd.engine.build import build_trainer
from datakd.pba.spec import REWARD, TrialSpec, member_seed


class PBATrial(tune.Trainable):
    """A datakd run advanced epoch by epoch under Ray Tune's PopulationBasedTraining."""

    def setup(self, config: dict[str, Any], spec: dict[str, Any] | None = None) -> None:
        if spec is None:
            raise ValueError("PBATrial needs its search spec (tune.with_parameters(PBATrial, spec=...))")
        self.spec = TrialSpec.from_dict(spec)
        self._build(config)

    def _build(self, config: dict[str, Any]) -> None:
        """A fresh Trainer for this member (its own seed, from its trial id); a restore may follow."""
        self.policy = list(config["policy"])
        self.member_seed = member_seed(self.spec.split_seed, self.trial_id)
        run_dir = Path(self.logdir) / "run"
        shutil.rmtree(run_dir, ignore_errors=True)
        cfg = self.spec.trial_config(self.policy, self.member_seed, run_dir)
        self.trainer = build_trainer(cfg, self.spec.mode, run_dir)
        self.history: list[list[int]] = []

    def step(self) -> dict[str, Any]:
        trainer = self.trainer
        trainer.augmenter.set_policy(self.policy)
        trainer.fit(until_epoch=trainer.epoch + 1)
        self.history.append(list(self.policy))
        row = trainer.metrics.rows[-1]
        result: dict[str, Any] = {
            REWARD: float(row[f"{trainer.eval_split}_top1"]),
            "epoch": trainer.epoch,
            "train_loss": float(row.get("loss_total", float("nan"))),
        }
        if trainer.epoch >= trainer.total_epochs:
            result["schedule"] = json.dumps(self.history)
            result["done"] = True
        return result

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        atomic_save(self.trainer.state_dict(), Path(checkpoint_dir) / "trainer.pt")
        atomic_write_text(json.dumps(self.history), Path(checkpoint_dir) / "history.json")

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        self.trainer.load_state(Path(checkpoint_dir) / "trainer.pt")
        self.history = json.loads((Path(checkpoint_dir) / "history.json").read_text())
        self.trainer.augmenter.set_policy(self.policy)  # this member's (explored) policy from now on
        # The copied state carries the donor's global RNG; give this member its own stream again.
        torch.manual_seed(derive_seed(self.member_seed, self.trainer.epoch))

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        """Actor reuse: Ray hands this actor another (or the same, exploited) member; rebuild for it."""
        self._build(new_config)
        return True
