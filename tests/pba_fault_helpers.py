"""A PBA search member that logs each step and dies once, for tests/test_pba_faults.py.

It lives in an importable module (not the test file) because Ray worker processes import it by name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from datakd.pba.trainable import PBATrial

CRASH_DIR = "DATAKD_TEST_PBA_CRASH_DIR"


class CrashOnceTrial(PBATrial):
    """Appends "<trial> <epochs done>" per step to steps.log; the first member to reach epoch 2 kills its own
    process (as an OOM kill would), exactly once in the whole search."""

    def step(self) -> dict[str, Any]:
        folder = Path(os.environ[CRASH_DIR])
        with open(folder / "steps.log", "a") as log:
            log.write(f"{self.trial_id} {self.trainer.epoch}\n")
        if self.trainer.epoch == 1:
            try:
                fd = os.open(folder / "crashed", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fd, self.trial_id.encode())
                os.close(fd)
                os._exit(1)
        return super().step()


class RankedTrial(PBATrial):
    """A member that trains nothing: its reward is fixed by its trial number (trial 0 best), so PBT's
    exploits are known in advance. Each step takes a moment, so Ray checkpoints as in a real search."""

    def _build(self, config: dict[str, Any]) -> None:
        self.policy = list(config["policy"])
        self.epochs_done = 0
        self.history: list[list[int]] = []

    def step(self) -> dict[str, Any]:
        self.epochs_done += 1
        self.history.append(list(self.policy))
        result: dict[str, Any] = {
            "val_acc": 100.0 - int(self.trial_id.rsplit("_", 1)[1]),
            "epoch": self.epochs_done,
        }
        if self.epochs_done >= self.spec.epochs:
            result["schedule"] = json.dumps(self.history)
            result["done"] = True
        return result

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        state = {"epochs_done": self.epochs_done, "history": self.history}
        (Path(checkpoint_dir) / "state.json").write_text(json.dumps(state))

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        state = json.loads((Path(checkpoint_dir) / "state.json").read_text())
        self.epochs_done, self.history = state["epochs_done"], state["history"]
