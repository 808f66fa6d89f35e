"""torchrun --max-restarts: a rank killed mid-epoch brings the job back through `--resume auto`, and the
restarted job ends with the weights of an uninterrupted run (2 gloo processes on the CPU)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from datakd.checkpoint import load_checkpoint
from tests.helpers import tiny_config

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def torchrun(recipe: Path, out: Path) -> list[str]:
    # --standalone: a c10d rendezvous on a free port, which (unlike the static one of --master-port) lets the
    # restarted workers meet again
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        # One restart, the one the kill needs: a restarted gloo mesh that fails to connect (stale peer
        # addresses from the first attempt, see datakd.api.distributed.restart_safe_store) fails the test.
        "--max-restarts",
        "1",
        "-m",
        "datakd",
        "train",
        "--config",
        str(recipe),
        "--out",
        str(out),
        "--resume",
        "auto",
        "--quiet",
    ]


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc to find the worker processes")
def test_killed_rank_restarts_and_resumes_to_the_same_weights(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "unused", engine={"checkpoint_every_iters": 2, "tensorboard": False})
    values = cfg.to_dict()
    values.pop("out")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(values))

    out = tmp_path / "killed"
    process = subprocess.Popen(
        torchrun(recipe, out),
        env=ENV,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 180
        while time.time() < deadline and process.poll() is None:
            last = out / "last.pt"
            if last.exists() and load_checkpoint(last)["global_step"] >= 2:
                break
            time.sleep(0.05)
        workers = children(process.pid)
        assert len(workers) == 2, f"expected 2 workers under torchrun, found {workers}"
        killed_at = load_checkpoint(out / "last.pt")
        os.kill(workers[-1], signal.SIGKILL)  # one rank dies mid-epoch; the agent restarts both
        _, err = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, err[-3000:]
    assert killed_at["epoch"] < 2
    assert "exitcode: -9" in err, err[-3000:]  # the agent saw the rank die, and (rc 0) restarted both

    reference = tmp_path / "reference"
    result = subprocess.run(
        torchrun(recipe, reference), env=ENV, cwd=REPO, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = load_checkpoint(reference / "last.pt"), load_checkpoint(out / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), f"{key} differs"
