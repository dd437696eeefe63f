"""Intervals for the numbers the product shows: a mean over seeds, and a difference of two means.

Student's t for the mean of a few seeds (the honest width at n = 3 is 4.3 standard errors, not 2);
Welch's t for a difference, which does not assume the two configurations vary alike across seeds.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """An estimate with its two-sided confidence interval; low/high are infinite when n < 2."""

    mean: float
    low: float
    high: float
    n: int
    sd: float  # the sample standard deviation (of the values, or of the difference's two samples pooled by Welch)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def excludes(self, value: float) -> bool:
        return value < self.low or value > self.high

    def text(self, digits: int = 4) -> str:
        if not math.isfinite(self.half_width):
            return f"{self.mean:.{digits}f} (one seed: no interval)"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"


def _t(df: float, confidence: float) -> float:
    from scipy import stats  # imported here: show and export without validation never need it

    return float(stats.t.ppf(0.5 + confidence / 2, df))


def mean_interval(values: list[float], *, confidence: float = CONFIDENCE) -> Interval:
    """The mean of `values` with Student's t interval."""
    if not values:
        raise ValueError(f"values must hold at least one number, but got {values=}.")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), but got {confidence=}.")
    n, mean = len(values), statistics.fmean(values)
    if n < 2:
        return Interval(mean, -math.inf, math.inf, n, math.nan)
    sd = statistics.stdev(values)
    half = _t(n - 1, confidence) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, sd)


def difference_interval(a: list[float], b: list[float], *, confidence: float = CONFIDENCE) -> Interval:
    """mean(a) - mean(b) with Welch's t interval (Welch–Satterthwaite degrees of freedom)."""
    if not a or not b:
        raise ValueError(f"both samples need at least one value, but got {len(a)=} and {len(b)=}.")
    diff = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return Interval(diff, -math.inf, math.inf, len(a) + len(b), math.nan)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return Interval(diff, diff, diff, len(a) + len(b), 0.0)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = _t(df, confidence) * se
    return Interval(diff, diff - half, diff + half, len(a) + len(b), se)


def paired_interval(a: list[float], b: list[float], *, confidence: float = CONFIDENCE) -> Interval:
    """mean(a - b) over pairs (a[i] and b[i] trained on the same seed) with Student's t interval, n - 1
    degrees of freedom: the seed's share of the noise cancels, which two independent samples cannot do."""
    if len(a) != len(b):
        raise ValueError(f"paired samples need the same length, but got {len(a)=} and {len(b)=}.")
    return mean_interval([x - y for x, y in zip(a, b)], confidence=confidence)


def twin_verdict(mixed: list[float], twins: dict[int, list[float]], *, confidence: float = CONFIDENCE) -> dict:
    """Mixed head sizes against their uniform twins, each paired by seed (lists in the same seed order).

    "mixed": mixed beats every twin (mixed - twin's interval below 0 for each: an intersection-union
    test, which needs no correction); "plain": some twin beats mixed at Bonferroni-corrected confidence
    over the twins; "no_noise": a difference with no spread at all (seed noise cannot be estimated, so
    nothing is claimed); else "none". Returns the branch and each twin's paired and Welch intervals.
    """
    if not twins:
        raise ValueError(f"twins must hold at least one twin, but got {twins=}.")
    per = {size: paired_interval(mixed, values, confidence=confidence) for size, values in twins.items()}
    corrected = 1 - (1 - confidence) / len(twins)
    wide = {size: paired_interval(mixed, values, confidence=corrected) for size, values in twins.items()}
    welch = {size: difference_interval(mixed, values, confidence=confidence) for size, values in twins.items()}
    if any(iv.n >= 2 and iv.sd == 0 for iv in per.values()):
        branch = "no_noise"
    elif all(iv.high < 0 for iv in per.values()):
        branch = "mixed"
    elif any(iv.low > 0 for iv in wide.values()):
        branch = "plain"
    else:
        branch = "none"
    return {"branch": branch, "paired": per, "paired_corrected": wide, "welch": welch}


__all__ = [
    "Interval",
    "mean_interval",
    "difference_interval",
    "paired_interval",
    "twin_verdict",
    "CONFIDENCE",
]
