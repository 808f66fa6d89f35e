"""TST detection Stage II: does one θ step raise the student's detection loss, and not the teacher's?

On the scenes test bed's RetinaNet pair (the trained teacher and a trained TST student), for each of
`--batches` training batches and each op set (geometric ops only, colour ops only, all ops): θ starts from
the starting policy (θ = 0, the run's fitted encoders), takes one Stage II step (the augmenter's own
objective and SGD, the recipe's lr and momentum), and the student's and the teacher's detection loss (each
detector's own loss sum, on the augmented batch with its warped targets) are measured before and after the
step on the same batch with the same random draw (ops, gates, magnitudes' noise). A step that does its job
raises the student's loss and does not raise the teacher's.

`--detached-targets` holds the boxes fixed in the gradient (Â detached before the targets are warped): the
Stage II gradient of the code before `geometry.boxes_follow_theta`, on the same draws. Compare the two:

    OMP_NUM_THREADS=1 python benchmarks/tst_dense_sign.py --batches 10
    OMP_NUM_THREADS=1 python benchmarks/tst_dense_sign.py --batches 10 --detached-targets

A benchmark (minutes of CPU), not a test: it needs the test bed's trained runs under /work/runs/dense-cpu.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datakd.augmenters.tst.augmenter import TSTAugmenter
from datakd.augmenters.tst.ops import AFFINE_OPS, COLOR_OPS, op_index
from datakd.augmenters.tst.policy import TSTPolicy
from datakd.augmenters.tst.search import frozen_student, parameter_list, search_update
from datakd.config import load_config
from datakd.engine.build import build_trainer
from datakd.models.detection.forward import run_detector

RUNS = Path("/work/runs/dense-cpu")
OP_SETS = {"geometric": list(AFFINE_OPS), "colour": list(COLOR_OPS), "all": None}  # None: the recipe's ops


def build(run: Path, teacher: Path | None, out: Path) -> Any:
    """The run's distillation trainer with its trained student loaded, no loader workers, θ as at start."""
    cfg = load_config(run / "config.yaml")
    cfg.student.checkpoint = str(run / "last.pt")
    if teacher is not None:
        cfg.teacher.checkpoint = str(teacher)
    cfg.out = str(out)
    cfg.data.workers = 0
    cfg.events = []  # Stage II is driven here, one step at a time
    cfg.engine.tensorboard = False
    return build_trainer(cfg, "distill", run_dir=out)


def detached_affine(policy: TSTPolicy) -> None:
    """Make `apply_one_affine` hand back Â detached: the image keeps its gradient, the targets lose theirs."""
    original = policy.apply_one_affine

    def apply(x: torch.Tensor, draw: Any, random: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        out, theta = original(x, draw, random)
        return out, theta.detach()

    policy.apply_one_affine = apply  # type: ignore[method-assign]


def restrict(policy: TSTPolicy, ops: list[str] | None, active: list[int], num_ops: int) -> None:
    """Draw from `ops` only (None: the recipe's active ops), at most the recipe's number of ops per draw."""
    policy.active = [op_index(name) for name in ops] if ops is not None else list(active)
    policy.num_ops = min(num_ops, len(policy.active))


def losses(trainer: Any, augmenter: TSTAugmenter, batch: Any, seed: int) -> tuple[float, float]:
    """(student, teacher) detection loss sums on the batch augmented with the draw of `seed`."""
    with torch.random.fork_rng(), torch.no_grad(), frozen_student(trainer.student_module) as student:
        torch.manual_seed(seed)
        aug = augmenter.augment_dense(batch)
        own = run_detector(student, aug.images, aug.annotations, losses=True)["losses"]
        taught = run_detector(trainer.teacher, aug.images, aug.annotations, losses=True)["losses"]
    return float(sum(own.values())), float(sum(taught.values()))


def step(trainer: Any, augmenter: TSTAugmenter, batch: Any, seed: int) -> float:
    """One Stage II step of θ from where it is (a fresh SGD, as each Stage II call starts); θ's grad norm."""
    policy = augmenter.require_policy()
    params = parameter_list(policy, not augmenter.freeze_encoders)
    optimizer = torch.optim.SGD(params, lr=augmenter.lr, momentum=augmenter.momentum)
    with torch.random.fork_rng(), frozen_student(trainer.student_module) as student:
        torch.manual_seed(seed)
        loss, _ = augmenter.dense_search_loss(batch, student, trainer.teacher, trainer.autocast)
        search_update(loss, optimizer, augmenter.clip_grad_norm)
    grads = [p.grad.norm() for p in params if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0


def measure(
    trainer: Any, batches: int, seed: int, say: Callable[[str], None]
) -> dict[str, list[dict[str, float]]]:
    """Per op set, one row per batch: losses before and after one θ step from the starting policy."""
    augmenter = trainer.augmenter
    assert isinstance(augmenter, TSTAugmenter)
    policy = augmenter.require_policy()
    start = copy.deepcopy(policy.state_dict())
    active, num_ops = list(policy.active), policy.num_ops
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in OP_SETS}
    for b, batch in enumerate(trainer.loader.epoch(0)):
        if b >= batches:
            break
        for k, (name, ops) in enumerate(OP_SETS.items()):
            policy.load_state_dict(start)
            restrict(policy, ops, active, num_ops)
            draw = seed + 100 * b + k
            student_before, teacher_before = losses(trainer, augmenter, batch, draw)
            grad = step(trainer, augmenter, batch, draw)
            student_after, teacher_after = losses(trainer, augmenter, batch, draw)
            rows[name].append(
                {
                    "student_before": student_before,
                    "student_after": student_after,
                    "teacher_before": teacher_before,
                    "teacher_after": teacher_after,
                    "grad_norm": grad,
                }
            )
            say(
                f"batch {b} {name:9s} student {student_before:.5f} -> {student_after:.5f}  "
                f"teacher {teacher_before:.5f} -> {teacher_after:.5f}  |grad θ| {grad:.3g}"
            )
    policy.load_state_dict(start)
    restrict(policy, None, active, num_ops)
    return rows


def table(rows: dict[str, list[dict[str, float]]]) -> str:
    """Per op set: how many batches' losses rose / fell / stayed (no op applied: the gates are random),
    and the mean and median changes (means are carried by a few large changes)."""
    lines = [
        "| ops | batches | student ↑ / ↓ / = | teacher ↑ / ↓ / = | Δ student mean, median | "
        "Δ teacher mean, median |",
        "|---|---|---|---|---|---|",
    ]
    for name, batch_rows in rows.items():
        ds = [r["student_after"] - r["student_before"] for r in batch_rows]
        dt = [r["teacher_after"] - r["teacher_before"] for r in batch_rows]
        lines.append(
            f"| {name} | {len(batch_rows)} | {_signs(ds)} | {_signs(dt)} | "
            f"{statistics.fmean(ds):+.2e}, {statistics.median(ds):+.2e} | "
            f"{statistics.fmean(dt):+.2e}, {statistics.median(dt):+.2e} |"
        )
    return "\n".join(lines)


def _signs(changes: list[float]) -> str:
    return f"{sum(d > 0 for d in changes)} / {sum(d < 0 for d in changes)} / {sum(d == 0 for d in changes)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=RUNS / "runs" / "det_tst_kd-seed0")
    parser.add_argument("--teacher", type=Path, default=RUNS / "teachers" / "detection" / "last.pt")
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--detached-targets", action="store_true", help="the gradient of the code before")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="also write the per-batch rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build(args.run, args.teacher, Path(tmp) / "run")
        if args.detached_targets:
            detached_affine(trainer.augmenter.require_policy())
        rows = measure(trainer, args.batches, args.seed, print)
    mode = "detached targets (before)" if args.detached_targets else "targets follow θ (boxes_follow_theta)"
    print(f"\n{mode}; lr {trainer.augmenter.lr}; {time.perf_counter() - started:.0f} s\n")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"mode": mode, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
