"""How the report writes numbers: bits/char to 4 decimals, costs to 3, intervals as ± or a span,
an infinite bound as null (JSON) or "unbounded", speeds, hours and device names.
"""

from __future__ import annotations

import math

from search.results.stats import Interval

DIGITS = 4  # bits/char are printed to 4 decimals everywhere (page, summary.md); report.json keeps full precision
COST_DIGITS = 3  # costs (ratios to the reference model) to 3
COST_MEANING = "ratio to the fixed reference model's seconds per token; lower is faster"


def finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def interval_dict(iv: Interval) -> dict[str, float | None]:
    return {"mean": iv.mean, "low": finite(iv.low), "high": finite(iv.high)}


def fmt_bpc(x: float | None) -> str:
    return "—" if x is None else f"{x:.{DIGITS}f}"


def fmt_pm(mean: float, low: float | None, high: float | None, digits: int = DIGITS) -> str:
    if low is None or high is None:
        return f"{mean:.{digits}f} (one seed: no interval)"
    return f"{mean:.{digits}f} ± {(high - low) / 2:.{digits}f}"


def fmt_span(low: float | None, high: float | None, digits: int = DIGITS) -> str:
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return "unbounded (one seed)"
    return f"{low:+.{digits}f} to {high:+.{digits}f}"


def fmt_speed(x: float | None) -> str:
    return "—" if not x else f"{x:,.0f}"


def fmt_mib(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"


def fmt_opt(n: int | None, what: str) -> str:
    return f"{n:,} {what}" if n else f"all {what}"


def fmt_hours(h: float) -> str:
    if h >= 1:
        return f"{h:.2f} h"
    return f"{h * 60:.1f} min" if h * 60 >= 1 else f"{h * 3600:.1f} s"


def fmt_device(name: str) -> str:
    return {"cpu": "CPU", "cuda": "GPU (cuda)", "unrecorded": "not recorded (never configured)"}.get(name, name)


__all__ = [
    "DIGITS",
    "COST_DIGITS",
    "COST_MEANING",
    "finite",
    "interval_dict",
    "fmt_bpc",
    "fmt_pm",
    "fmt_span",
    "fmt_speed",
    "fmt_mib",
    "fmt_opt",
    "fmt_hours",
    "fmt_device",
]
