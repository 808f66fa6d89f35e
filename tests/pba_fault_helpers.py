"""A PBA search member that logs each step and dies once, for tests/test_pba_faults.py.

It lives in an importable module (not the test file) because Ray worker processes import it by name.
"""

from __future__ import annotations

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
