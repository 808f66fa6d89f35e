"""Paired statistics of a claim: per-seed differences, their 95 % t-interval, and a verdict.

Runs of two arms with the same seed share the student initialisation and the data order, so the
per-seed difference removes most of the seed-to-seed noise; the interval is the Student t interval of
the mean difference. No scipy: the machine that runs the benchmark may not have it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Two-sided 95 % quantiles t_{0.975, df} for df = 1..30 (standard tables, 3 decimals).
T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
Z975 = 1.959964

REPRODUCED, CONTRADICTED, INCONCLUSIVE = "reproduced", "contradicted", "inconclusive"


def t975(df: int) -> float:
    """t_{0.975, df}; beyond the table, the Cornish–Fisher expansion (error < 1e-3 for df > 30)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(T975):
        return T975[df - 1]
    z = Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class Paired:
    """The paired comparison `better − worse` over the seeds both arms finished."""

    seeds: tuple[int, ...]
    diffs: tuple[float, ...]
    mean: float
    std: float | None
    low: float | None
    high: float | None

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def verdict(self) -> str:
        """reproduced: the interval lies above 0; contradicted: below 0; otherwise inconclusive."""
        if self.low is not None and self.low > 0:
            return REPRODUCED
        if self.high is not None and self.high < 0:
            return CONTRADICTED
        return INCONCLUSIVE


def paired(better: dict[int, float], worse: dict[int, float]) -> Paired:
    """`better[s] − worse[s]` for every seed s in both; the interval needs at least two seeds."""
    seeds = tuple(sorted(set(better) & set(worse)))
    diffs = tuple(better[s] - worse[s] for s in seeds)
    n = len(diffs)
    if n == 0:
        return Paired(seeds, diffs, math.nan, None, None, None)
    mean = sum(diffs) / n
    if n < 2:
        return Paired(seeds, diffs, mean, None, None, None)
    std = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = t975(n - 1) * std / math.sqrt(n)
    return Paired(seeds, diffs, mean, std, mean - half, mean + half)
