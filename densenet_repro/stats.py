"""Intervals and verdicts from a few seeds.

A claim "A has a lower error than B" is judged on the difference of the mean errors over seeds,
with a Welch t-interval (unequal variances; with two seeds per arm it has about one degree of
freedom, so it is wide: that width is the honest price of two seeds):

    holds                            the whole 95% interval is on the claimed side of 0
    does not hold                    the whole interval is on the other side
    inconclusive at this budget      the interval contains 0

A single run's error against a fixed target ("at most 9%") is judged on the Wilson interval of its
test error over the n test images (`error_rate`): that interval counts the sampling of the test set
only, not the spread over seeds, and every report that uses it says so.

No verdict is ever written by hand; every report computes it from the runs it shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive at this budget"


@dataclass(frozen=True)
class Difference:
    mean_a: float
    mean_b: float
    sd_a: float | None      # sample standard deviation over seeds (None with one seed)
    sd_b: float | None
    n_a: int
    n_b: int
    diff: float             # mean_a - mean_b
    low: float              # 95% interval of diff (nan with fewer than two seeds per arm)
    high: float

    def verdict(self, claim_a_lower: bool = True) -> str:
        """The claim 'a < b' (claim_a_lower) or 'a > b', judged from the interval."""
        if math.isnan(self.low):
            return INCONCLUSIVE
        low, high = (self.low, self.high) if claim_a_lower else (-self.high, -self.low)
        if high < 0:
            return HOLDS
        if low > 0:
            return FAILS
        return INCONCLUSIVE


def _mean_sd(x: list[float]) -> tuple[float, float | None]:
    m = sum(x) / len(x)
    if len(x) < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in x) / (len(x) - 1))


def difference(a: list[float], b: list[float], level: float = 0.95) -> Difference:
    """mean(a) - mean(b) with a Welch t-interval."""
    if not a or not b:
        raise ValueError("both arms need at least one run")
    from scipy import stats

    ma, sa = _mean_sd(a)
    mb, sb = _mean_sd(b)
    if sa is None or sb is None:
        return Difference(ma, mb, sa, sb, len(a), len(b), ma - mb, math.nan, math.nan)
    va, vb = sa ** 2 / len(a), sb ** 2 / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return Difference(ma, mb, sa, sb, len(a), len(b), ma - mb, ma - mb, ma - mb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = stats.t.ppf(0.5 + level / 2, df) * se
    return Difference(ma, mb, sa, sb, len(a), len(b), ma - mb, ma - mb - half, ma - mb + half)


@dataclass(frozen=True)
class MeanInterval:
    mean: float
    low: float              # 95% t-interval of the mean (nan with one value)
    high: float
    n: int

    def verdict_against(self, threshold: float, claim_above: bool = True) -> str:
        """The claim 'mean > threshold' (claim_above) or 'mean < threshold', judged from the interval."""
        if math.isnan(self.low):
            return INCONCLUSIVE
        if (self.low > threshold) if claim_above else (self.high < threshold):
            return HOLDS
        if (self.high < threshold) if claim_above else (self.low > threshold):
            return FAILS
        return INCONCLUSIVE


def mean_interval(x: list[float], level: float = 0.95) -> MeanInterval:
    """The mean of x with a one-sample t-interval (e.g. over the layers of one network)."""
    if not x:
        raise ValueError("no values")
    from scipy import stats

    m, sd = _mean_sd(x)
    if sd is None:
        return MeanInterval(m, math.nan, math.nan, 1)
    half = stats.t.ppf(0.5 + level / 2, len(x) - 1) * sd / math.sqrt(len(x))
    return MeanInterval(m, m - half, m + half, len(x))


@dataclass(frozen=True)
class ErrorRate:
    pct: float              # the measured test error, %
    low: float              # 95% Wilson interval, % (the sampling of the n test images only)
    high: float
    n: int                  # test images

    def verdict_at_most(self, target_pct: float) -> str:
        """The claim 'the error is at most target_pct', judged from the interval."""
        if self.high <= target_pct:
            return HOLDS
        if self.low > target_pct:
            return FAILS
        return INCONCLUSIVE


def error_rate(error_pct: float, n: int, level: float = 0.95) -> ErrorRate:
    """A test error (%) measured on n images with its Wilson score interval (in %)."""
    if n < 1 or not 0 <= error_pct <= 100:
        raise ValueError(f"an error rate needs n >= 1 test images and 0-100%, got {error_pct}% of {n}")
    from scipy import stats

    z, p = float(stats.norm.ppf(0.5 + level / 2)), error_pct / 100
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return ErrorRate(float(error_pct), 100 * max(0.0, centre - half), 100 * min(1.0, centre + half), n)
