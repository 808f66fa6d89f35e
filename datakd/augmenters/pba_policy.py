"""PBA policies and schedules: the 60-integer policy, its per-image application, explore, schedule files.

A *policy* is 60 integers, two copies of the 15 ops (`pba_ops.OPS` order), each op a (probability level
0..10 → p = level/10, magnitude level 0..9) pair, laid out as PBA's ``hp_policy``:
``[p_0, m_0, p_1, m_1, ..., p_14, m_14, p'_0, m'_0, ..., p'_14, m'_14]``. Entry k (0..29) of the policy is
op ``OPS[k % 15]`` with levels ``(policy[2k], policy[2k + 1])``.

A *schedule* is a policy per epoch (the output of a PBA search); it is stored as JSON (`Schedule.save`) and
stretched to another number of epochs by ratio (`Schedule.policy_at`).

Per image (PBA ``apply_policy``): draw how many ops to apply, 0/1/2 with probability 0.2/0.3/0.5; walk the
30 entries in a random order applying each with its probability until that many were applied (fewer if the
walk ends first). `sample_plan` draws this for a whole batch at once; `apply_plan` runs the chosen ops, each
op once per distinct parameter on the subset of images that chose it.
"""

from __future__ import annotations

import ast
import itertools
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from datakd.augmenters.pba_ops import OPS, SIGNED_OPS, apply_op, op_parameter
from datakd.checkpoint import atomic_write_text
from datakd.errors import DatakdError

NUM_OPS = len(OPS)
NUM_ENTRIES = 2 * NUM_OPS
POLICY_LENGTH = 2 * NUM_ENTRIES
PROB_MAX = 10
MAG_MAX = 9
#: Probability that an image gets 0, 1 or 2 ops (PBA's CIFAR setting).
COUNT_PROBS = (0.2, 0.3, 0.5)
#: Explore: per integer, resample with this probability, else move by 0..3 up or down.
RESAMPLE_PROB = 0.2
SCHEDULE_FORMAT = "datakd.pba_schedule"


def check_policy(levels: Sequence[int], where: str = "policy") -> tuple[int, ...]:
    """Validate 60 integer levels (even positions 0..10, odd positions 0..9) and return them as a tuple."""
    values = list(levels)
    if len(values) != POLICY_LENGTH:
        raise DatakdError(f"{where} must have {POLICY_LENGTH} integers, got {len(values)}")
    for i, v in enumerate(values):
        top = PROB_MAX if i % 2 == 0 else MAG_MAX
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= top:
            kind = "probability" if i % 2 == 0 else "magnitude"
            raise DatakdError(f"{where}[{i}] is a {kind} level and must be an integer in 0..{top}, got {v!r}")
    return tuple(values)


def entry_op(entry: int) -> str:
    return OPS[entry % NUM_OPS]


def probabilities(policy: Sequence[int]) -> torch.Tensor:
    """The 30 application probabilities of a policy (float64, CPU)."""
    return torch.tensor([policy[2 * k] / PROB_MAX for k in range(NUM_ENTRIES)], dtype=torch.float64)


def parameters(policy: Sequence[int]) -> list[float | None]:
    """The 30 unsigned op parameters of a policy (`pba_ops.op_parameter` of each entry's magnitude)."""
    return [op_parameter(entry_op(k), policy[2 * k + 1]) for k in range(NUM_ENTRIES)]


def explore(policy: Sequence[int], rng: random.Random) -> list[int]:
    """PBA's explore step on the 60 integers: with probability 0.2 resample uniformly in range, else add or
    subtract (fair coin) an amount drawn uniformly from {0, 1, 2, 3}, clipped to the range."""
    out = []
    for i, value in enumerate(policy):
        top = PROB_MAX if i % 2 == 0 else MAG_MAX
        if rng.random() < RESAMPLE_PROB:
            out.append(rng.randint(0, top))
            continue
        amount = rng.randint(0, 3)
        out.append(max(0, value - amount) if rng.random() < 0.5 else min(top, value + amount))
    return out


@dataclass
class Plan:
    """Which policy entries each image applies: `entries` is n×2 (first, second op; −1 = none)."""

    entries: torch.Tensor
    signs: torch.Tensor  # n×2, ±1 for the signed ops
    cutout_centres: torch.Tensor  # n×2×2, (row, col) per round


def sample_plan(policy: Sequence[int], n: int, height: int, width: int, generator: torch.Generator) -> Plan:
    """Draw the PBA application plan of `n` images (CPU tensors; a fixed number of draws per call)."""
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    count = (u >= COUNT_PROBS[0]).long() + (u >= COUNT_PROBS[0] + COUNT_PROBS[1]).long()
    order = torch.argsort(torch.rand(n, NUM_ENTRIES, generator=generator), dim=1)
    hits = torch.rand(n, NUM_ENTRIES, generator=generator, dtype=torch.float64) < probabilities(policy)[order]
    rank = torch.cumsum(hits.long(), dim=1)
    applied = hits & (rank <= count.view(-1, 1))
    entries = torch.full((n, 2), -1, dtype=torch.long)
    for r in (1, 2):
        chosen = applied & (rank == r)
        first = chosen.long().argmax(dim=1, keepdim=True)
        entries[:, r - 1] = torch.where(chosen.any(dim=1), order.gather(1, first).squeeze(1), -1)
    signs = torch.where(torch.rand(n, 2, generator=generator) < 0.5, 1.0, -1.0)
    rows = torch.randint(0, height, (n, 2), generator=generator)
    cols = torch.randint(0, width, (n, 2), generator=generator)
    return Plan(entries, signs, torch.stack([rows, cols], dim=2))


def apply_plan(images: torch.Tensor, policy: Sequence[int], plan: Plan, fill: Sequence[int]) -> torch.Tensor:
    """Run the plan on the uint8 batch: round 1 then round 2, each op once per distinct signed parameter."""
    params = parameters(policy)
    out = images
    for r in range(2):
        entries = plan.entries[:, r]
        groups: dict[tuple[str, float | None], list[int]] = {}
        for i, entry in enumerate(entries.tolist()):
            if entry < 0:
                continue
            op = entry_op(entry)
            value = params[entry]
            if op in SIGNED_OPS and value is not None:
                value = value * float(plan.signs[i, r])
            groups.setdefault((op, value), []).append(i)
        if not groups:
            continue
        if out is images:
            out = images.clone()
        for (op, value), members in groups.items():
            idx = torch.tensor(members, dtype=torch.long)
            centres = plan.cutout_centres[idx, r] if op == "Cutout" else None
            dev_idx = idx.to(out.device)
            out[dev_idx] = apply_op(op, out[dev_idx], value, fill, centres)
    return out


@dataclass
class Schedule:
    """A policy per epoch, plus free-form metadata about where it came from."""

    policies: list[tuple[int, ...]]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.policies:
            raise DatakdError("a PBA schedule needs at least one epoch's policy")
        self.policies = [check_policy(p, f"schedule epoch {i}") for i, p in enumerate(self.policies)]

    @property
    def epochs(self) -> int:
        return len(self.policies)

    def policy_at(self, epoch: int, total_epochs: int | None = None) -> tuple[int, ...]:
        """The policy of `epoch` in a run of `total_epochs` epochs, stretched by ratio when the run's length
        differs from the schedule's: epoch e uses the schedule's epoch ⌊e · len(schedule) / total⌋."""
        total = total_epochs or self.epochs
        index = min(self.epochs - 1, max(0, epoch) * self.epochs // max(total, 1))
        return self.policies[index]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SCHEDULE_FORMAT,
            "version": 1,
            "ops": list(OPS),
            "layout": "per epoch 60 ints: 2 copies x 15 ops x (probability level 0-10, magnitude level 0-9)",
            "epochs": self.epochs,
            "meta": self.meta,
            "policies": [list(p) for p in self.policies],
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write_text(json.dumps(self.to_dict(), indent=1) + "\n", path)  # a full disk: one line
        return path

    @classmethod
    def load(cls, path: str | Path) -> Schedule:
        path = Path(path)
        if not path.is_file():
            raise DatakdError(
                f"PBA schedule {str(path)!r} does not exist; create one with `datakd pba search` "
                "(or convert a PBA log with `datakd pba convert`)"
            )
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DatakdError(f"PBA schedule {str(path)!r} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != SCHEDULE_FORMAT:
            raise DatakdError(f"{str(path)!r} is not a datakd PBA schedule (format {SCHEDULE_FORMAT!r})")
        if list(data.get("ops", OPS)) != list(OPS):
            raise DatakdError(f"PBA schedule {str(path)!r} uses a different op order: {data.get('ops')}")
        return cls([tuple(p) for p in data["policies"]], dict(data.get("meta") or {}))

    @classmethod
    def from_pba_log(cls, path: str | Path, epochs: int) -> Schedule:
        """A schedule from a PBA/role-kd ``pbt_policy_<trial>.txt`` log of a search of `epochs` epochs.

        Each line records one exploit: (target trial, cloned trial, target epoch, clone epoch, old config,
        new config). The schedule is the clone-epoch's policy until the next exploit, the new policy after
        it (PBA ``parse_log``); the op order is the explicit list in `pba_ops.OPS`.
        """
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
        rows = []
        for number, line in enumerate(lines, start=1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                try:
                    row = ast.literal_eval(line)
                except (ValueError, SyntaxError):
                    raise DatakdError(f"{str(path)!r} line {number} is not a PBA policy log line") from None
            if not isinstance(row, (list, tuple)) or len(row) != 6:
                raise DatakdError(f"{str(path)!r} line {number}: expected 6 fields, got {row!r}")
            old, new = (r if isinstance(r, dict) else {"hp_policy": r} for r in row[4:6])
            rows.append(
                (str(row[0]), str(row[1]), int(row[2]), int(row[3]), old["hp_policy"], new["hp_policy"])
            )
        if not rows:
            raise DatakdError(f"{str(path)!r} holds no PBA policy log lines")
        start = 0
        for i in range(len(rows) - 1):  # keep the last consistent chain of clones
            if rows[i][0] != rows[i + 1][1]:
                start = i + 1
        rows = rows[start:]
        segments = [(rows[0][3], rows[0][4])]
        for prev, nxt in itertools.pairwise(rows):
            segments.append((nxt[3] - prev[3], prev[5]))
        segments.append((epochs - rows[-1][3], rows[-1][5]))
        policies: list[tuple[int, ...]] = []
        for length, policy in segments:
            policies += [tuple(policy)] * max(0, length)
        return cls(policies[:epochs], {"source": str(path), "search_epochs": epochs})
