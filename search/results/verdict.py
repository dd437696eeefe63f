"""The report's verdict: do mixed head sizes beat plain multi-head attention at this budget, from
the validated configurations (seed means and Welch intervals), and what it costs.
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from search.results.evidence import Validated
from search.results.stats import CONFIDENCE, difference_interval
from search.results.text import (
    COST_DIGITS,
    COST_MEANING,
    DIGITS,
    finite,
    fmt_bpc,
    fmt_span,
    interval_dict,
)
from search.store.storage import storage_flag
from search.study.trials import BASELINE, mixes_sizes, objective_names
from search.study.types import DEFAULT_STORAGE

MANY_SEEDS = 30  # beyond this a projected seed count is no advice: the difference is lost in the seed spread


def verdict(
    name: str,
    trials: list[FrozenTrial],
    validation: optuna.Study | None,
    rows: list[Validated],
    *,
    storage_url: str = DEFAULT_STORAGE,
) -> dict[str, Any]:
    """Best validated mixed-size configuration against the best validated uniform one, with Welch's interval."""
    out: dict[str, Any] = {
        "status": "none",
        "sentence": "",
        "mixed": None,
        "uniform": None,
        "difference": None,
        "low": None,
        "high": None,
        "confidence": CONFIDENCE,
        "speed_ratio": None,
    }
    validate = f"python run_search.py validate --study {name}{storage_flag(storage_url)}"
    if validation is None:
        out["sentence"] = (
            f"No verdict: study {name!r} has not been validated yet, so no configuration has been retrained "
            f"with fresh seeds; run `{validate}`."
        )
        return out
    mixed = next((r for r in rows if r.mixed), None)
    uniform = next((r for r in rows if not r.mixed), None)
    if mixed is None or uniform is None:
        out["sentence"] = _one_sided(trials, rows, mixed_missing=mixed is None, validate=validate)
        return out
    d = difference_interval(mixed.values, uniform.values)
    out.update(mixed=_side(mixed), uniform=_side(uniform), difference=d.mean, low=finite(d.low), high=finite(d.high))
    if mixed.tokens_per_s and uniform.tokens_per_s:
        out["speed_ratio"] = mixed.tokens_per_s / uniform.tokens_per_s
    pair = (
        f"{mixed.heads} (trial {mixed.source_trial}, {fmt_bpc(mixed.mean)}) against {uniform.heads} "
        f"(trial {uniform.source_trial}, {fmt_bpc(uniform.mean)})"
    )
    seeds = _seed_count(mixed, uniform)
    figures = (
        f"mixed minus uniform is {d.mean:+.{DIGITS}f} bits/char, {CONFIDENCE:.0%} interval {fmt_span(d.low, d.high)}"
    )
    if d.high < 0:
        out["status"] = "mixed"
        out["sentence"] = (
            f"Mixed head sizes beat plain multi-head attention at this budget by more than seed noise: "
            f"{pair}; {figures}, entirely below 0 with {seeds}."
        )
    elif d.low > 0:
        out["status"] = "uniform"
        out["sentence"] = (
            f"Plain multi-head attention beats mixed head sizes at this budget by more than seed noise: "
            f"{pair}; {figures}, entirely above 0 with {seeds}."
        )
    else:
        out["status"] = "indistinguishable"
        out["sentence"] = (
            f"Mixed head sizes and plain multi-head attention are not distinguishable from seed noise at this "
            f"budget with {seeds}: {pair}; {figures}, which includes 0. {_more_seeds(d, mixed, uniform, validate)}"
        )
    if mixed.costs:
        out["costs"], out["cost_sentence"] = _cost_verdict(validation, mixed, uniform)
    return out


def _cost_verdict(validation: optuna.Study, mixed: Validated, uniform: Validated) -> tuple[dict[str, Any], str]:
    """Each cost of the verdict's two sides, with Welch's interval of mixed minus uniform. A seed changes
    the weights, not the shape, so the spread between seeds here is the spread of the timing itself."""
    by_number = {t.number: t for t in validation.get_trials(deepcopy=False)}
    figures, sentences = {}, []
    for i, name in enumerate(objective_names(validation)[1:], start=1):
        d = difference_interval(
            [by_number[n].values[i] for n in mixed.trials], [by_number[n].values[i] for n in uniform.trials]
        )
        status = "mixed" if d.high < 0 else "uniform" if d.low > 0 else "indistinguishable"
        figures[name] = {
            "mixed": interval_dict(mixed.costs[name]),
            "uniform": interval_dict(uniform.costs[name]),
            "difference": d.mean,
            "low": finite(d.low),
            "high": finite(d.high),
            "status": status,
        }
        tail = {
            "mixed": f"entirely below 0: the mixed configuration has the lower {name} by more than the spread between measurements",
            "uniform": f"entirely above 0: the uniform configuration has the lower {name} by more than the spread between measurements",
            "indistinguishable": f"which includes 0, so these measurements do not tell their {name} apart",
        }[status]
        sentences.append(
            f"On {name} ({COST_MEANING}; measured once per validation seed), the mixed configuration has "
            f"{mixed.costs[name].text(COST_DIGITS)} against {uniform.costs[name].text(COST_DIGITS)} for the uniform one: "
            f"mixed minus uniform is {d.mean:+.{COST_DIGITS}f}, {CONFIDENCE:.0%} interval "
            f"{fmt_span(d.low, d.high, COST_DIGITS)}, {tail}."
        )
    return figures, " ".join(sentences)


def _side(r: Validated) -> dict[str, Any]:
    return {
        "source_trial": r.source_trial,
        "heads": r.heads,
        "family": r.family,
        "baseline": r.role == BASELINE,
        "mean": r.mean,
        "low": finite(r.interval.low),
        "high": finite(r.interval.high),
        "seeds": r.seeds,
        "values": r.values,
        "tokens_per_s": r.tokens_per_s,
    }


def _seed_count(a: Validated, b: Validated) -> str:
    n, m = len(a.values), len(b.values)
    text = f"{n} seed{'s' if n > 1 else ''}" if n == m else f"{n} and {m} seeds"
    return text + (" (one seed gives no interval)" if min(n, m) < 2 else "")


def _more_seeds(d, a: Validated, b: Validated, validate: str) -> str:
    """What it would take: more seeds. The half-width shrinks about as 1/sqrt(seeds), so a difference that
    held at its present size would clear 0 at about n * (half-width / |difference|)^2 seeds."""
    n = min(len(a.values), len(b.values))
    if n < 2:
        return f"An interval needs at least 2 seeds per configuration: `{validate} --seeds 3`."
    if d.mean == 0 or not math.isfinite(d.half_width):
        return f"Telling them apart would take more seeds: `{validate} --seeds {2 * n}`."
    need = max(n + 1, math.ceil(n * (d.half_width / abs(d.mean)) ** 2))
    if need > MANY_SEEDS:
        return (
            f"Telling them apart would take more seeds than is practical: at its present size the difference would need "
            f"over {MANY_SEEDS} seeds per configuration (the interval narrows about as 1/√seeds), so it is small next to "
            "the spread between seeds."
        )
    return (
        f"Telling them apart would take more seeds: if the difference held at its present size, about {need} seeds per "
        f"configuration (the interval narrows about as 1/√seeds): `{validate} --seeds {need}`."
    )


def _one_sided(trials: list[FrozenTrial], rows: list[Validated], *, mixed_missing: bool, validate: str) -> str:
    if not rows:
        return f"No verdict: the validation study holds no COMPLETE trial yet; run `{validate}`."
    kind = "mixed-size" if mixed_missing else "uniform (plain multi-head)"
    built = sum(
        mixes_sizes(t.user_attrs["model_config"]) == mixed_missing for t in trials if "model_config" in t.user_attrs
    )
    if not built:
        families = ", ".join(sorted({t.user_attrs["family"] for t in trials if t.user_attrs.get("family")})) or "none"
        fix = (
            "add a mixed family (fractal, geometric) to space.families"
            if mixed_missing
            else "add uniform to space.families or enable [baselines]"
        )
        return f"No verdict: the search space has no {kind} configuration to compare (families searched: {families}); {fix}."
    return (
        f"No verdict: none of the {built} {kind} configurations the search built was validated; "
        f"rerun `{validate} --top K` with a larger K."
    )


__all__ = ["verdict", "MANY_SEEDS"]
