"""The GPU benchmark script, run as its CPU smoke: it reuses benchmarks/throughput.py's steppers, and a
new throughput option once reached it only on the GPU machine, as an AttributeError in every section
(2026-11-30, its first GPU run). Here every section must finish without an error on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_cpu_smoke_runs_every_section(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, "benchmarks/gpu.py", "--device", "cpu", "--tiny", "--no-compile"]
    cmd += ["--methods", "kd,tlcutmix", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["errors"] == {}, data["errors"]
    assert data["skipped"] == []
    assert data["headline"]["kd_images_per_sec"] > 0
    assert data["data"]["device_loader_images_per_sec"] > 0
    assert {name: sorted(row) for name, row in data["methods"].items()} == {
        "kd": ["images_per_sec"],
        "tlcutmix": ["images_per_sec"],
    }
