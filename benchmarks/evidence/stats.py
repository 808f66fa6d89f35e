"""Paired statistics of a claim: per-seed differences, their 95 % t-interval, and a verdict.

Runs of two arms with the same seed share the student initialisation and the data order, so the
per-seed difference removes most of the seed-to-seed noise; the interval is the Student t interval of
the mean difference. No scipy: the machine that runs the benchmark may not have it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

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


# ---------------------------------------------------------------------------------------------------------
# Design: a claim's seeds are fixed before any run. If seeds were added after looking at a result (a
# "look"), the final test must spend its 5 % over every look, or the error rate grows (two looks at a
# nominal 95 % give about 8 %, four about 13 %). The boundary is Pocock's: one nominal level for every
# look, solved for the looks' actual information fractions (seeds at the look / seeds at the end).

ALPHA = 0.05
BOUNDARY = "Pocock"


def _normal_cdf(x: np.ndarray | float) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf)(np.asarray(x, dtype=float) / math.sqrt(2.0)))


def _continue_probability(c: float, fractions: tuple[float, ...], points: int = 801) -> float:
    """P(|Z_k| < c at every look k) for the Brownian z-statistics observed at information `fractions`.

    Numerical integration of the sub-density of Z_k on the continuation region (Armitage, McPherson and
    Rowe 1969): Z_k·√t_k = Z_{k−1}·√t_{k−1} + N(0, t_k − t_{k−1}).
    """
    grid = np.linspace(-c, c, points)
    step = grid[1] - grid[0]
    weights = np.full(points, step)
    weights[[0, -1]] = step / 2  # trapezoid rule
    density = np.exp(-(grid**2) / 2) / math.sqrt(2 * math.pi)  # Z_1 ~ N(0, 1)
    for before, now in itertools.pairwise(fractions):
        # Z_now = (√before·Z_before + √(now − before)·ε)/√now
        scale = math.sqrt((now - before) / now)
        shift = math.sqrt(before / now)
        kernel = np.exp(-(((grid[:, None] - shift * grid[None, :]) / scale) ** 2) / 2)
        density = kernel @ (density * weights) / (scale * math.sqrt(2 * math.pi))
    return float(np.sum(density * weights))


def pocock_level(looks: tuple[int, ...], alpha: float = ALPHA) -> float:
    """The nominal two-sided level of every look of a Pocock boundary at these looks (seeds per look).

    One look: `alpha` itself. Equal spacing reproduces Pocock's table (2 looks 0.0294, 4 looks 0.0182).
    """
    looks = tuple(sorted(set(looks)))
    if len(looks) <= 1:
        return alpha
    fractions = tuple(n / looks[-1] for n in looks)
    low, high = 1.0, 5.0  # the z boundary: continuing everywhere must have probability 1 − alpha
    for _ in range(60):
        mid = (low + high) / 2
        if _continue_probability(mid, fractions) < 1 - alpha:
            low = mid
        else:
            high = mid
    return float(2 * (1 - _normal_cdf(high)))


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta I_x(a, b), by its continued fraction (modified Lentz)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast only below the mean
        return 1.0 - _betainc(b, a, 1.0 - x)
    front = math.exp(
        a * math.log(x) + b * math.log1p(-x) - math.lgamma(a) - math.lgamma(b) + math.lgamma(a + b)
    )
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    value = d
    for m in range(1, 300):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            value *= c * d
        if abs(c * d - 1.0) < 1e-14:
            break
    return front * value / a


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T_df| ≥ |t|)."""
    return _betainc(df / 2, 0.5, df / (df + t * t))


def t_quantile(level: float, df: int) -> float:
    """t such that P(|T_df| ≥ t) = 1 − level (e.g. level 0.95 → t_{0.975, df})."""
    tail = 1.0 - level
    low, high = 0.0, 1e4
    for _ in range(200):
        mid = (low + high) / 2
        if t_two_sided_p(mid, df) > tail:
            low = mid
        else:
            high = mid
    return high


NOT_EVALUATED = "not evaluated"
WORDS = {REPRODUCED: "reproduced", CONTRADICTED: "contradicted", INCONCLUSIVE: "no difference resolved"}


@dataclass(frozen=True)
class Judged:
    """A claim's verdict under its design: the looks taken (seeds at each) and the boundary's interval."""

    paired: Paired
    looks: tuple[int, ...]  # seeds at every look, the final one included
    level: float  # nominal two-sided level of the final test
    low: float | None
    high: float | None
    verdict: str
    nominal: str  # the verdict of the plain 95 % interval
    at_least: bool = False
    reason: str = ""  # why a claim was not evaluated

    @property
    def after_a_look(self) -> bool:
        return len(self.looks) > 1

    @property
    def words(self) -> str:
        """The one wording used in RESULTS.md, README.md and docs/results.md."""
        if self.verdict == NOT_EVALUATED:
            return f"not evaluated ({self.reason})" if self.reason else NOT_EVALUATED
        text = WORDS[self.verdict]
        if self.after_a_look:
            looks = "→".join(str(n) for n in self.looks)
            text += f" after a look (seeds {looks}; {BOUNDARY} boundary, nominal level {self.level:.4f})"
            if self.nominal != self.verdict:
                text += f"; at a nominal 95 %, {WORDS[self.nominal]}"
        if self.verdict == INCONCLUSIVE and self.at_least:
            text += "; what '≥' predicts, not a proof"
        return text


def judge(p: Paired, interim: tuple[int, ...] = (), at_least: bool = False, reason: str = "") -> Judged:
    """The verdict of `p` given the interim looks (seeds at which a result was seen and seeds added).

    No interim look: the 95 % t-interval. Otherwise the Pocock level for the looks (interim + final) and
    the t-interval at that level; `reason` marks a claim that is not evaluated (e.g. TST's θ did not move).
    """
    looks = tuple(sorted({n for n in interim if n < p.n} | {p.n}))
    level = pocock_level(looks)
    if reason or p.n < 2 or p.std is None:
        return Judged(p, looks, level, None, None, NOT_EVALUATED if reason else INCONCLUSIVE,
                      p.verdict, at_least, reason)  # fmt: skip
    half = t_quantile(1 - level, p.n - 1) * p.std / math.sqrt(p.n)
    low, high = p.mean - half, p.mean + half
    verdict = REPRODUCED if low > 0 else CONTRADICTED if high < 0 else INCONCLUSIVE
    return Judged(p, looks, level, low, high, verdict, p.verdict, at_least, reason)
