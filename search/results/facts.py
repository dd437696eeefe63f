"""The report's facts: every figure it states, computed from the search study and its validation
study (trial counts, compute, memory, families, validated rows, importances, commands), JSON-ready.

Means, intervals and differences come from `evidence` and `stats` (the numbers `show` and `export`
agree on); importances from Optuna's PED-ANOVA. Nothing here imports torch.
"""

from __future__ import annotations

import re
import shlex
import statistics
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.results.evidence import Validated
from search.results.text import finite, interval_dict
from search.results.verdict import verdict
from search.store.storage import mask_url, storage_flag
from search.study.trials import BASELINE, objective_names

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
MEMORY_KINDS = ("memory_forecast", "memory_measured", "oom")  # prune_kind values that are about memory
# PED-ANOVA compares the top trials (10%, at least 2) with all of them: below 3 the two sets are the
# same trials and every importance comes out equal, which says nothing
MIN_TRIALS_FOR_IMPORTANCE = 3


def gather(
    study: optuna.Study, validation: optuna.Study | None, rows: list[Validated], *, storage_url: str, out: Path
) -> dict[str, Any]:
    """Every figure the report states, JSON-ready (an infinite interval bound is null)."""
    trials = study.get_trials(deepcopy=False)
    vtrials = validation.get_trials(deepcopy=False) if validation is not None else []
    why = {
        int(p["source_trial"]): list(p.get("why", []))
        for p in (validation.user_attrs.get("selection", []) if validation else [])
    }
    setup = _setup(study, trials)
    names = objective_names(study)
    # keys a single-objective report lacks stay out of it, so its report.json is as it was
    multi = {"objectives": names, "pareto": _pareto(study, names)} if len(names) > 1 else {}
    return {
        "study": study.study_name,
        "storage": mask_url(storage_url),
        "validation_study": validation.study_name if validation is not None else None,
        "setup": setup,
        "trials": {"search": _counts(trials), "validation": _counts(vtrials) if validation is not None else None},
        "prune_kinds": dict(
            sorted(
                Counter(
                    t.user_attrs.get("prune_kind", "unrecorded") for t in trials if t.state == TrialState.PRUNED
                ).items()
            )
        ),
        "compute": _compute(trials, vtrials),
        "memory": _memory(trials),
        **multi,
        "families": family_rows(trials, rows, names),
        "validated": [_validated_row(r, why.get(r.source_trial, [])) for r in rows],
        "seeds": list(validation.user_attrs.get("seeds", [])) if validation is not None else [],
        "verdict": verdict(study.study_name, trials, validation, rows, storage_url=storage_url),
        "importances": _importances(study, names),
        "commands": _commands(study, validation, setup, storage_url, out),
    }


def _setup(study: optuna.Study, trials: list[FrozenTrial]) -> dict[str, Any]:
    sf = study.user_attrs.get("study_file", {})
    data, budget, training = sf.get("data", {}), sf.get("budget", {}), sf.get("training", {})
    # the trials' own train_config: a --dataset override never reaches the stored study file
    tc: dict[str, Any] = next((t.user_attrs["train_config"] for t in trials if "train_config" in t.user_attrs), {})
    unit = study.user_attrs.get("step_unit", "steps")  # studies from before token budgets counted steps
    return {
        "description": sf.get("study", {}).get("description", ""),
        "dataset": tc.get("dataset", data.get("dataset")),
        "max_train_stories": data.get("max_train_stories", tc.get("max_train_stories")),
        "max_train_tokens": data.get("max_train_tokens", tc.get("max_train_tokens")),
        "max_val_stories": data.get("max_val_stories", tc.get("max_val_stories")),
        "tokenizer_vocab": data.get("tokenizer_vocab", tc.get("tokenizer_vocab")),
        "vocab_sizes": study.user_attrs.get("vocab_sizes", {}),
        "budget_params": budget.get("params"),
        "budget_tolerance": budget.get("tolerance"),
        "step_unit": unit,
        "per_trial": training.get("tokens") if unit == "tokens" else tc.get("max_steps", training.get("max_steps")),
        "families": sf.get("space", {}).get("families", []),
    }


def _counts(trials: list[FrozenTrial]) -> dict[str, int]:
    c = Counter(t.state.name for t in trials)
    return {"total": len(trials), **{s: c[s] for s in STATES}}


def _compute(trials: list[FrozenTrial], vtrials: list[FrozenTrial]) -> dict[str, dict[str, Any]]:
    """Hours per device (the trial's train_config.device), search and validation apart; CPU core-hours too."""
    out: dict[str, dict[str, Any]] = {}
    for which, ts in (("search", trials), ("validation", vtrials)):
        for t in ts:
            if t.duration is None:  # still running, or never started
                continue
            device = (t.user_attrs.get("train_config") or {}).get("device") or "unrecorded"
            d = out.setdefault(
                device,
                {
                    "trials": 0,
                    "search_hours": 0.0,
                    "validation_hours": 0.0,
                    "hours": 0.0,
                    "core_hours": 0.0 if device == "cpu" else None,
                    "no_threads": 0,
                },
            )
            hours = t.duration.total_seconds() / 3600
            d["trials"] += 1
            d[f"{which}_hours"] += hours
            d["hours"] += hours
            if device == "cpu":
                if t.user_attrs.get("threads"):
                    d["core_hours"] += hours * t.user_attrs["threads"]
                else:
                    d["no_threads"] += 1
    return dict(sorted(out.items()))


def _memory(trials: list[FrozenTrial]) -> dict[str, Any]:
    pruned = []
    for t in trials:
        a = t.user_attrs
        if t.state == TrialState.PRUNED and a.get("prune_kind") in MEMORY_KINDS:
            never = a["prune_kind"] == "memory_forecast"
            pruned.append(
                {
                    "trial": t.number,
                    "kind": a["prune_kind"],
                    "heads": a.get("heads"),
                    "forecast_mib": a.get("forecast_peak_mib"),
                    "measured_mib": None if never else a.get("peak_mem_mib"),
                    "never_allocated": never,
                    "reason": a.get("prune_reason", ""),
                }
            )
    pairs = []
    for t in trials:
        f, m = t.user_attrs.get("forecast_peak_mib"), t.user_attrs.get("peak_mem_mib")
        if t.state == TrialState.COMPLETE and f and m:
            pairs.append({"trial": t.number, "forecast_mib": f, "measured_mib": m, "error": (f - m) / m})
    over = max(pairs, key=lambda p: p["error"], default=None)
    under = min(pairs, key=lambda p: p["error"], default=None)
    return {
        "pruned": pruned,
        "compared": len(pairs),
        "worst_over": over if over and over["error"] > 0 else None,
        "worst_under": under if under and under["error"] < 0 else None,
    }


def family_rows(
    trials: list[FrozenTrial], rows: list[Validated], names: Sequence[str] = ("val_bpc",)
) -> list[dict[str, Any]]:
    """One row per head family of the search (baselines apart): its best search value and its best
    validated configuration; params and tokens/s are the validated configuration's, else the best search trial's.
    With costs among the objective `names`, each cost of the family too (see _family_costs)."""
    groups: dict[tuple[str, bool], list[FrozenTrial]] = {}
    for t in trials:
        if t.user_attrs.get("family"):
            groups.setdefault((t.user_attrs["family"], t.user_attrs.get("role") == BASELINE), []).append(t)
    out: list[dict[str, Any]] = []
    for (family, baseline), ts in groups.items():
        done = sorted((t for t in ts if t.state == TrialState.COMPLETE), key=lambda t: (t.values[0], t.number))
        best = done[0] if done else None
        numbers = {t.number for t in ts}
        v = next((r for r in rows if r.source_trial in numbers), None)  # rows come best first
        out.append(
            {
                "family": family,
                "baseline": baseline,
                "trials": len(ts),
                "complete": len(done),
                "best_search_value": best.values[0] if best else None,
                "best_search_trial": best.number if best else None,
                "validated_trial": v.source_trial if v else None,
                "heads": v.heads if v else (best.user_attrs.get("heads") if best else None),
                "mean": v.mean if v else None,
                "low": finite(v.interval.low) if v else None,
                "high": finite(v.interval.high) if v else None,
                "seeds": v.interval.n if v else 0,
                "n_params": v.n_params if v else (best.user_attrs.get("n_params") if best else None),
                "tokens_per_s": v.tokens_per_s if v else (best.user_attrs.get("tokens_per_s") if best else None),
                **({"costs": _family_costs(done, v, names)} if len(names) > 1 else {}),
            }
        )
    out.sort(
        key=lambda r: (_last_if_none(r["mean"]), _last_if_none(r["best_search_value"]), r["family"], r["baseline"])
    )
    return out


def _family_costs(done: list[FrozenTrial], v: Validated | None, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per cost: the lowest and the median over the family's COMPLETE search trials (any val_bpc), and
    the validated configuration's mean over seeds."""
    out = {}
    for i, name in enumerate(names[1:], start=1):
        xs = [t.values[i] for t in done]
        out[name] = {
            "lowest": min(xs, default=None),
            "median": statistics.median(xs) if xs else None,
            "validated": interval_dict(v.costs[name]) if v is not None and name in v.costs else None,
        }
    return out


def _pareto(study: optuna.Study, names: list[str]) -> list[dict[str, Any]]:
    """The trials on the Pareto front (Optuna's study.best_trials), best val_bpc first."""
    return [
        {
            "trial": t.number,
            "heads": t.user_attrs.get("heads"),
            "family": t.user_attrs.get("family"),
            "baseline": t.user_attrs.get("role") == BASELINE,
            "values": dict(zip(names, t.values)),
        }
        for t in sorted(study.best_trials, key=lambda t: (t.values[0], t.number))
    ]


def _last_if_none(x: float | None) -> tuple[bool, float]:
    return (x is None, x if x is not None else 0.0)


def _validated_row(r: Validated, why: list[str]) -> dict[str, Any]:
    return {
        "source_trial": r.source_trial,
        "heads": r.heads,
        "family": r.family,
        "mixed": r.mixed,
        "baseline": r.role == BASELINE,
        "why": why,
        "mean": r.mean,
        "low": finite(r.interval.low),
        "high": finite(r.interval.high),
        "seeds": r.seeds,
        "values": r.values,
        "n_params": r.n_params,
        "tokens_per_s": r.tokens_per_s,
        "search_value": r.search_value,
        **({"costs": {name: interval_dict(c) for name, c in r.costs.items()}} if r.costs else {}),
    }


def importance_evaluator():
    from optuna.importance import PedAnovaImportanceEvaluator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # PED-ANOVA: Optuna's own, no scikit-learn (the default fANOVA needs it); it measures which
        # parameters matter for reaching the best 10% of trials
        return PedAnovaImportanceEvaluator()


def _importances(study: optuna.Study, names: Sequence[str]) -> dict[str, Any]:
    """Importances for val_bpc ("params"); in a multi-objective study also for each cost ("costs")."""
    n = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    method = "PED-ANOVA (optuna.importance.PedAnovaImportanceEvaluator)"
    if n < MIN_TRIALS_FOR_IMPORTANCE:
        return {
            "method": method,
            "params": {},
            "note": f"Parameter importances need at least {MIN_TRIALS_FOR_IMPORTANCE} "
            f"COMPLETE trials, and this study has {n}; run more trials.",
        }
    params = _param_importances(study, objective_target(names, 0))
    if not params:
        return {
            "method": method,
            "params": {},
            "note": "No parameter varied across the COMPLETE trials, so none has an importance.",
        }
    costs = {name: _param_importances(study, objective_target(names, i)) for i, name in enumerate(names[1:], start=1)}
    return {"method": method, "params": params, "note": None, **({"costs": costs} if costs else {})}


def _param_importances(study: optuna.Study, target: Callable[[FrozenTrial], float] | None) -> dict[str, float]:
    with warnings.catch_warnings():
        # PED-ANOVA warns per conditional param with few trials in a regime (a family's own params), and
        # that a target is minimized; the report states the trial count instead of printing third-party lines
        warnings.simplefilter("ignore", UserWarning)
        return dict(optuna.importance.get_param_importances(study, evaluator=importance_evaluator(), target=target))


def objective_target(names: Sequence[str], i: int) -> Callable[[FrozenTrial], float] | None:
    """Optuna's `target` for objective i: a multi-objective study has no single value (FrozenTrial.value
    raises); a single-objective one passes None, Optuna's own default."""
    return (lambda t: t.values[i]) if len(names) > 1 else None


def _commands(
    study: optuna.Study, validation: optuna.Study | None, setup: dict[str, Any], storage_url: str, out: Path
) -> dict[str, str]:
    """The commands behind every figure; a storage URL shows no password."""
    name, flag = study.study_name, storage_flag(storage_url)
    stored = study.user_attrs.get("study_file", {}).get("data", {}).get("dataset")
    dataset = f" --dataset {shlex.quote(setup['dataset'])}" if setup["dataset"] and setup["dataset"] != stored else ""
    validate = f"python run_search.py validate --study {name}{flag}"
    if validation is not None:
        tops = [
            int(m.group(1))
            for p in validation.user_attrs.get("selection", [])
            for w in p.get("why", [])
            if (m := re.fullmatch(r"top (\d+)(?: \(Pareto front\))?", w))
        ]
        seeds = validation.user_attrs.get("seeds", [])
        validate += (f" --top {max(tops)}" if tops else "") + (f" --seeds {len(seeds)}" if seeds else "")
    return {
        "run": f"python run_search.py run --study {shlex.quote(study.user_attrs.get('study_path', f'studies/{name}.toml'))}{dataset}{flag}",
        "validate": validate,
        "report": f"python run_search.py report --study {name}{flag} --out {shlex.quote(str(out))}",
        "export": f"python run_search.py export --study {name}{flag}",
    }


__all__ = [
    "gather",
    "family_rows",
    "importance_evaluator",
    "objective_target",
    "STATES",
    "MEMORY_KINDS",
    "MIN_TRIALS_FOR_IMPORTANCE",
]
