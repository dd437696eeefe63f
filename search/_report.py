"""The study report: what a search and its validation found, as one offline HTML page, a markdown
summary and report.json (every figure the page states).

It reads the search study NAME and its validation study NAME.validation and nothing else. Means,
intervals and differences come from `search._evidence` and `search._stats` (the numbers `show` and
`export` agree on); importances and three charts (four in a multi-objective study: the Pareto front)
come from Optuna's importance and matplotlib visualization APIs; only what neither draws (validated
means with their intervals, mean validation curves) is drawn here. Nothing here imports torch.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import shlex
import statistics
import sys
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from mfha.errors import ConfigError
from search._evidence import BASELINE, Validated, load_validation, mixes_sizes, objective_names, validated
from search._export import open_study
from search._stats import CONFIDENCE, Interval, difference_interval
from search._storage import make_storage, mask_url
from search._study_file import DEFAULT_STORAGE

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
MEMORY_KINDS = ("memory_forecast", "memory_measured", "oom")  # prune_kind values that are about memory
# PED-ANOVA compares the top trials (10%, at least 2) with all of them: below 3 the two sets are the
# same trials and every importance comes out equal, which says nothing
MIN_TRIALS_FOR_IMPORTANCE = 3
MANY_SEEDS = 30  # beyond this a projected seed count is no advice: the difference is lost in the seed spread
MANY_CURVES = 20  # above this many trials the intermediate-values legend would hide the chart
DIGITS = 4  # bits/char are printed to 4 decimals everywhere (page, summary.md); report.json keeps full precision
COST_DIGITS = 3  # costs (ratios to the reference model) to 3
COST_MEANING = "ratio to the fixed reference model's seconds per token; lower is faster"


@dataclass
class Report:
    folder: Path
    files: list[Path]  # index.html, summary.md, report.json
    verdict: str


@dataclass
class Chart:
    key: str
    title: str
    png: bytes | None
    note: str  # the caption, or why there is no chart


def write_report(storage_url: str, name: str, out: str | Path) -> Report:
    """Write OUT/index.html, OUT/summary.md and OUT/report.json for study `name` and its validation."""
    study = open_study(storage_url, name)
    validation = load_validation(make_storage(storage_url, heartbeat_interval=None, create=False), name)
    folder = _make_folder(out)
    rows = validated(study, validation) if validation is not None else []
    facts = gather(study, validation, rows, storage_url=storage_url, out=folder)
    charts = draw_charts(study, rows, facts)
    blocks = document(facts, charts)
    files = [folder / "index.html", folder / "summary.md", folder / "report.json"]
    _write(files[0], render_html(facts, blocks))
    _write(files[1], render_markdown(blocks))
    _write(files[2], json.dumps(facts, indent=2) + "\n")
    return Report(folder, files, _verdict_text(facts["verdict"]))


def _make_folder(out: str | Path) -> Path:
    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create --out folder {str(folder)!r}: {e.strerror}.") from None
    return folder


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot write {str(path)!r} in --out: {e.strerror}.") from None


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
    tc = next((t.user_attrs["train_config"] for t in trials if "train_config" in t.user_attrs), {})
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
    out = []
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
                "low": _finite(v.interval.low) if v else None,
                "high": _finite(v.interval.high) if v else None,
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
            "validated": _interval(v.costs[name]) if v is not None and name in v.costs else None,
        }
    return out


def _interval(iv: Interval) -> dict[str, float | None]:
    return {"mean": iv.mean, "low": _finite(iv.low), "high": _finite(iv.high)}


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
        "low": _finite(r.interval.low),
        "high": _finite(r.interval.high),
        "seeds": r.seeds,
        "values": r.values,
        "n_params": r.n_params,
        "tokens_per_s": r.tokens_per_s,
        "search_value": r.search_value,
        **({"costs": {name: _interval(c) for name, c in r.costs.items()}} if r.costs else {}),
    }


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


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
    validate = f"python run_search.py validate --study {name}{_storage_flag(storage_url)}"
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
    out.update(mixed=_side(mixed), uniform=_side(uniform), difference=d.mean, low=_finite(d.low), high=_finite(d.high))
    if mixed.tokens_per_s and uniform.tokens_per_s:
        out["speed_ratio"] = mixed.tokens_per_s / uniform.tokens_per_s
    pair = (
        f"{mixed.heads} (trial {mixed.source_trial}, {_bpc(mixed.mean)}) against {uniform.heads} "
        f"(trial {uniform.source_trial}, {_bpc(uniform.mean)})"
    )
    seeds = _seed_count(mixed, uniform)
    figures = f"mixed minus uniform is {d.mean:+.{DIGITS}f} bits/char, {CONFIDENCE:.0%} interval {_span(d.low, d.high)}"
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
            "mixed": _interval(mixed.costs[name]),
            "uniform": _interval(uniform.costs[name]),
            "difference": d.mean,
            "low": _finite(d.low),
            "high": _finite(d.high),
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
            f"{_span(d.low, d.high, COST_DIGITS)}, {tail}."
        )
    return figures, " ".join(sentences)


def _side(r: Validated) -> dict[str, Any]:
    return {
        "source_trial": r.source_trial,
        "heads": r.heads,
        "family": r.family,
        "baseline": r.role == BASELINE,
        "mean": r.mean,
        "low": _finite(r.interval.low),
        "high": _finite(r.interval.high),
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


def _importance_evaluator():
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
    params = _param_importances(study, _objective(names, 0))
    if not params:
        return {
            "method": method,
            "params": {},
            "note": "No parameter varied across the COMPLETE trials, so none has an importance.",
        }
    costs = {name: _param_importances(study, _objective(names, i)) for i, name in enumerate(names[1:], start=1)}
    return {"method": method, "params": params, "note": None, **({"costs": costs} if costs else {})}


def _param_importances(study: optuna.Study, target: Callable[[FrozenTrial], float] | None) -> dict[str, float]:
    with warnings.catch_warnings():
        # PED-ANOVA warns per conditional param with few trials in a regime (a family's own params), and
        # that a target is minimized; the report states the trial count instead of printing third-party lines
        warnings.simplefilter("ignore", UserWarning)
        return dict(optuna.importance.get_param_importances(study, evaluator=_importance_evaluator(), target=target))


def _objective(names: Sequence[str], i: int) -> Callable[[FrozenTrial], float] | None:
    """Optuna's `target` for objective i: a multi-objective study has no single value (FrozenTrial.value
    raises); a single-objective one passes None, Optuna's own default."""
    return (lambda t: t.values[i]) if len(names) > 1 else None


def _storage_flag(storage_url: str) -> str:
    return "" if storage_url == DEFAULT_STORAGE else f" --storage {shlex.quote(mask_url(storage_url))}"


def _commands(
    study: optuna.Study, validation: optuna.Study | None, setup: dict[str, Any], storage_url: str, out: Path
) -> dict[str, str]:
    """The commands behind every figure; a storage URL shows no password."""
    name, flag = study.study_name, _storage_flag(storage_url)
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


def draw_charts(study: optuna.Study, rows: list[Validated], facts: dict[str, Any]) -> list[Chart]:
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # a notebook that already picked a backend keeps it
        matplotlib.use("Agg")
    from optuna.visualization import matplotlib as ovm

    unit = facts["setup"]["step_unit"]
    complete = facts["trials"]["search"]["COMPLETE"]
    reported = any(t.intermediate_values for t in study.get_trials(deepcopy=False))
    target = "val_bpc (bits/char)"
    names = facts.get("objectives", ["val_bpc"])
    bpc = _objective(names, 0)
    # Optuna draws no best-so-far line for a target function: several objectives have no single best
    best = ", and the best so far" if bpc is None else ""
    charts = [
        Chart("history", "Optimization history", None, "No COMPLETE trial yet.")
        if not complete
        else Chart(
            "history",
            "Optimization history",
            _optuna_png(lambda: ovm.plot_optimization_history(study, target=bpc, target_name=target)),
            f"Final validation bits/char of every COMPLETE search trial{best} (Optuna).",
        ),
        Chart("intermediate", "Intermediate values", None, "No trial reported an evaluation yet.")
        if not reported
        else Chart(
            "intermediate",
            "Intermediate values",
            _optuna_png(lambda: _intermediate(ovm, study, unit)),
            f"Validation bits/char at each evaluation of every search trial, by {unit} (Optuna; pruned trials stop early).",
        ),
        Chart("importances", "Parameter importances", None, facts["importances"]["note"] or "")
        if not facts["importances"]["params"]
        else Chart(
            "importances",
            "Parameter importances",
            _optuna_png(
                lambda: ovm.plot_param_importances(
                    study, evaluator=_importance_evaluator(), target=bpc, target_name=target
                )
            ),
            f"{facts['importances']['method']} over the COMPLETE search trials" + (" (for val_bpc)." if bpc else "."),
        ),
    ]
    if len(names) > 1:
        charts.append(_pareto_chart(ovm, study, names, complete))
    if not rows:
        why = "No configuration has been validated yet (see the verdict)."
        charts += [Chart("validated", "Validated means", None, why), Chart("curves", "Validation curves", None, why)]
    else:
        charts += [
            Chart(
                "validated",
                "Validated means",
                _png(_validated_figure(rows)),
                f"Mean final validation bits/char over seeds with its {CONFIDENCE:.0%} t-interval, per retrained configuration.",
            ),
            Chart(
                "curves",
                "Validation curves",
                _png(_curves_figure(rows, unit)),
                f"Validation bits/char by {unit}, the mean over seeds, per retrained configuration.",
            ),
        ]
    return charts


def _pareto_chart(ovm, study: optuna.Study, names: list[str], complete: int) -> Chart:
    if not complete:
        return Chart("pareto", "Pareto front", None, "No COMPLETE trial yet.")
    axes: list[str] = []

    def draw():
        ax = ovm.plot_pareto_front(study, target_names=names)
        # the title (the image's alt text) names the axes as Optuna drew them: the page says what the image shows
        axes.extend(get() for get in (ax.get_xlabel, ax.get_ylabel, getattr(ax, "get_zlabel", None)) if get)
        return ax

    png = _optuna_png(draw)
    return Chart(
        "pareto",
        f"Pareto front ({', '.join(f'{xyz}: {label}' for xyz, label in zip('xyz', axes))})",
        png,
        f"Every COMPLETE search trial by {' and '.join(names)}; the trials on the Pareto front (no other trial is "
        'as low on every objective and lower on one) are Optuna\'s "Best Trial".',
    )


def _intermediate(ovm, study: optuna.Study, unit: str):
    ax = ovm.plot_intermediate_values(study)
    ax.set_xlabel(unit)
    ax.set_ylabel("val_bpc (bits/char)")
    if len(study.trials) > MANY_CURVES and ax.get_legend() is not None:
        ax.get_legend().remove()
    return ax


def _optuna_png(draw: Callable) -> bytes:
    import matplotlib
    import matplotlib.pyplot as plt

    # Optuna's plots set the ggplot style globally; rc_context puts the caller's style back
    with warnings.catch_warnings(), matplotlib.rc_context():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)  # PED-ANOVA's few-trials-per-regime lines, as in _importances
        fig = draw().figure
        fig.set_size_inches(8, 4.5)
        try:
            return _png(fig)
        finally:
            plt.close(fig)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _label(r: Validated) -> str:
    return f"#{r.source_trial} {r.heads}" + (" (baseline)" if r.role == BASELINE else "")


def _validated_figure(rows: list[Validated]):
    from matplotlib.figure import Figure  # no pyplot: nothing global to clean up

    fig = Figure(figsize=(8, max(2.5, 0.9 + 0.45 * len(rows))))
    ax = fig.subplots()
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ys = list(range(len(rows)))[::-1]  # best on top
    for y, r in zip(ys, rows):
        color = "tab:orange" if r.mixed else "tab:blue"
        finite = math.isfinite(r.interval.half_width)
        ax.errorbar(r.mean, y, xerr=r.interval.half_width if finite else None, fmt="o", color=color, capsize=4)
        ax.plot(r.values, [y] * len(r.values), "x", color=color, alpha=0.5)
    ax.set_yticks(ys, [_label(r) for r in rows])
    ax.set_xlabel(f"final val_bpc (bits/char): mean, {CONFIDENCE:.0%} interval, seeds (x)")
    ax.set_title("Validated configurations (orange: mixed head sizes, blue: uniform)")
    ax.grid(axis="x", alpha=0.3)
    return fig


def _curves_figure(rows: list[Validated], unit: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    for r in rows:
        common = sorted(set.intersection(*(set(c) for c in r.curves.values()))) if r.curves else []
        means = [sum(c[s] for c in r.curves.values()) / len(r.curves) for s in common]
        ax.plot(
            common, means, marker=".", linestyle="-" if r.mixed else "--", label=f"{_label(r)} ({len(r.curves)} seeds)"
        )
    ax.set_xlabel(unit)
    ax.set_ylabel("val_bpc (bits/char), mean over seeds")
    ax.set_title("Validation curves (solid: mixed head sizes, dashed: uniform)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def document(facts: dict[str, Any], charts: list[Chart]) -> list[tuple]:
    """The report as blocks: ("h1"|"h2"|"p"|"verdict", text), ("table", headers, rows), ("chart", Chart), ("code", lines).
    HTML and markdown render the same blocks, so the page and summary.md state the same facts."""
    s, v = facts["setup"], facts["verdict"]
    chart = {c.key: c for c in charts}
    blocks: list[tuple] = [("h1", f"Study {facts['study']}: report")]
    if s["description"]:
        blocks.append(("p", s["description"]))
    blocks += [("h2", "Verdict: mixed head sizes or plain multi-head attention?")] + _verdict_blocks(v)
    blocks += [("h2", "The study")] + _study_blocks(facts) + [("h2", "Head families")] + _family_blocks(facts)
    blocks += [("h2", "Validated configurations")] + _validated_blocks(facts) + [chart["validated"], chart["curves"]]
    if "pareto" in facts:
        blocks += [("h2", "Quality against cost: the Pareto front")] + _pareto_blocks(facts) + [chart["pareto"]]
    blocks += (
        [("h2", "The search")]
        + [chart["history"], chart["intermediate"]]
        + _importance_blocks(facts)
        + [chart["importances"]]
    )
    blocks += [
        ("h2", "Reproduce"),
        ("p", "Every figure above comes from these commands (storage passwords shown as ***):"),
        ("code", list(facts["commands"].values())),
    ]
    return [("chart", b) if isinstance(b, Chart) else b for b in blocks]


def _verdict_text(v: dict[str, Any]) -> str:
    """The verdict on val_bpc, and in a multi-objective study the sentence on each cost after it."""
    return v["sentence"] + (" " + v["cost_sentence"] if v.get("cost_sentence") else "")


def _verdict_blocks(v: dict[str, Any]) -> list[tuple]:
    blocks: list[tuple] = [("verdict", _verdict_text(v))]
    if v["mixed"] is None:
        return blocks
    costs = v.get("costs", {})
    blocks.append(
        (
            "table",
            ["", "configuration", "search trial", _mean_header(costs), *_cost_headers(costs), "seeds", "tokens/s"],
            [
                [
                    side,
                    v[key]["heads"] + (" (baseline)" if v[key]["baseline"] else ""),
                    str(v[key]["source_trial"]),
                    _pm(v[key]["mean"], v[key]["low"], v[key]["high"]),
                    *(_cost_pm(c[key]) for c in costs.values()),
                    str(len(v[key]["seeds"])),
                    _speed(v[key]["tokens_per_s"]),
                ]
                for side, key in (("best mixed", "mixed"), ("best uniform", "uniform"))
            ]
            + [
                [
                    "mixed − uniform",
                    "",
                    "",
                    f"{v['difference']:+.{DIGITS}f} ({_span(v['low'], v['high'])})",
                    *(
                        f"{c['difference']:+.{COST_DIGITS}f} ({_span(c['low'], c['high'], COST_DIGITS)})"
                        for c in costs.values()
                    ),
                    "",
                    "",
                ]
            ],
        )
    )
    if v["speed_ratio"]:
        blocks.append(
            (
                "p",
                f"Speed: the mixed configuration trains at {_speed(v['mixed']['tokens_per_s'])} tokens/s, the uniform one "
                f"at {_speed(v['uniform']['tokens_per_s'])} tokens/s: a ratio of {v['speed_ratio']:.3f} (mixed / uniform, "
                "means over the validation trials).",
            )
        )
    return blocks


def _mean_header(costs: Collection[str]) -> str:
    """The val_bpc column's header: named where cost columns stand beside it."""
    return ("val_bpc " if costs else "") + f"mean ± {CONFIDENCE:.0%}"


def _cost_headers(costs: Collection[str]) -> list[str]:
    return [f"{name} mean ± {CONFIDENCE:.0%}" for name in costs]


def _cost_pm(iv: dict[str, Any] | None) -> str:
    return "—" if iv is None else _pm(iv["mean"], iv["low"], iv["high"], COST_DIGITS)


def _pareto_blocks(facts: dict[str, Any]) -> list[tuple]:
    names, front = facts["objectives"], facts["pareto"]
    if not front:
        return [("p", "No COMPLETE search trial yet, so no Pareto front.")]
    return [
        (
            "p",
            f"{len(front)} of the {facts['trials']['search']['COMPLETE']} COMPLETE search trials are on the Pareto front of "
            f"{', '.join(names)}: no other trial is as low on every objective and lower on one. A cost ({COST_MEANING}) was "
            "measured once, after the trial's training. Best val_bpc first.",
        ),
        (
            "table",
            ["search trial", "heads", "family", *names],
            [
                [
                    str(p["trial"]),
                    (p["heads"] or "") + (" (baseline)" if p["baseline"] else ""),
                    p["family"] or "",
                    _bpc(p["values"][names[0]]),
                    *(f"{p['values'][c]:.{COST_DIGITS}f}" for c in names[1:]),
                ]
                for p in front
            ],
        ),
    ]


def _study_blocks(facts: dict[str, Any]) -> list[tuple]:
    s, t = facts["setup"], facts["trials"]
    vocab = ", ".join(f"{k}: {v}" for k, v in s["vocab_sizes"].items())
    data = (
        f"Data: `{s['dataset']}`, training slice {_opt(s['max_train_stories'], 'stories')}"
        + (f", at most {s['max_train_tokens']:,} tokens" if s["max_train_tokens"] else "")
        + f", validation {_opt(s['max_val_stories'], 'stories')}; tokenizer {s['tokenizer_vocab'] or 'char'}"
        + (f" (vocabulary {vocab})" if vocab else "")
        + "."
    )
    budget = (
        f"Budget: {s['budget_params']:,} parameters ± {s['budget_tolerance']:.0%}"
        if s["budget_params"]
        else "Budget: not recorded"
    )
    per_trial = f"{s['per_trial']:,} {s['step_unit']}" if s["per_trial"] else f"not recorded ({s['step_unit']})"
    families = f"; head families searched: {', '.join(s['families'])}" if s["families"] else ""
    blocks = [
        ("p", data),
        ("p", f"{budget}; each search trial trains for {per_trial}{families}."),
        (
            "table",
            ["study", "trials", *(x for x in STATES if _any_state(facts, x))],
            [
                [name, str(c["total"]), *(str(c[x]) for x in STATES if _any_state(facts, x))]
                for name, c in ((facts["study"], t["search"]), (facts["validation_study"], t["validation"]))
                if c is not None
            ],
        ),
    ]
    if facts["prune_kinds"]:
        blocks.append(("p", "Pruned, by kind: " + ", ".join(f"{k} {n}" for k, n in facts["prune_kinds"].items()) + "."))
    blocks.append(
        (
            "p",
            "Compute spent (sum of trial durations, both studies, by the trial's device; CPU also in core-hours = duration × threads):",
        )
    )
    blocks.append(
        (
            "table",
            ["device", "trials", "search", "validation", "total", "core-hours"],
            [
                [
                    _device(k),
                    str(d["trials"]),
                    _hours(d["search_hours"]),
                    _hours(d["validation_hours"]),
                    _hours(d["hours"]),
                    "—"
                    if d["core_hours"] is None
                    else f"{d['core_hours']:.3g}"
                    + (f" ({d['no_threads']} trials without a thread count left out)" if d["no_threads"] else ""),
                ]
                for k, d in facts["compute"].items()
            ],
        )
    )
    return blocks + _memory_blocks(facts["memory"])


def _memory_blocks(m: dict[str, Any]) -> list[tuple]:
    blocks = []
    if m["pruned"]:
        blocks.append(
            (
                "p",
                f"Memory-pruned trials ({len(m['pruned'])}); a trial pruned on its forecast was never allocated, "
                "so it has no measured peak:",
            )
        )
        blocks.append(
            (
                "table",
                ["trial", "kind", "heads", "forecast MiB", "measured MiB"],
                [
                    [
                        str(p["trial"]),
                        p["kind"],
                        p["heads"] or "",
                        _mib(p["forecast_mib"]),
                        "never allocated" if p["never_allocated"] else _mib(p["measured_mib"]),
                    ]
                    for p in m["pruned"]
                ],
            )
        )
    else:
        blocks.append(("p", "No trial was pruned for memory."))
    if m["compared"]:

        def one(p):
            return f"{p['error']:+.1%} (trial {p['trial']}: forecast {p['forecast_mib']:.1f} MiB, measured {p['measured_mib']:.1f} MiB)"

        over = one(m["worst_over"]) if m["worst_over"] else "none (no forecast above its measurement)"
        under = one(m["worst_under"]) if m["worst_under"] else "none (no measurement above its forecast)"
        blocks.append(
            (
                "p",
                f"Forecast against measured peak memory over {m['compared']} COMPLETE trials: worst over-forecast "
                f"{over}; worst under-forecast {under}.",
            )
        )
    return blocks


def _family_blocks(facts: dict[str, Any]) -> list[tuple]:
    rows, costs = facts["families"], _costs(facts)
    if not rows:
        return [("p", "No search trial has a head family yet.")]
    return [
        (
            "p",
            f"One row per head family of the search trials, baselines apart. Validated: the family's best retrained "
            f"configuration, mean over seeds ± its {CONFIDENCE:.0%} t-interval; parameters and tokens/s are that "
            "configuration's (else the best search trial's)."
            + (
                f" A cost ({COST_MEANING}): the lowest and the median over the family's COMPLETE search trials, and "
                "the validated configuration's mean over seeds."
                if costs
                else ""
            ),
        ),
        (
            "table",
            [
                "family",
                "trials (complete)",
                "best search val_bpc",
                "validated configuration",
                "validated " + _mean_header(costs),
                *(h for c in costs for h in (f"search {c}: lowest, median", f"validated {c} mean ± {CONFIDENCE:.0%}")),
                "seeds",
                "parameters",
                "tokens/s",
            ],
            [
                [
                    r["family"] + (" (baseline)" if r["baseline"] else ""),
                    f"{r['trials']} ({r['complete']})",
                    f"{_bpc(r['best_search_value'])} (trial {r['best_search_trial']})"
                    if r["best_search_value"] is not None
                    else "—",
                    f"{r['heads']} (trial {r['validated_trial']})"
                    if r["validated_trial"] is not None
                    else "not validated",
                    _pm(r["mean"], r["low"], r["high"]) if r["mean"] is not None else "—",
                    *_family_cost_cells(r, costs),
                    str(r["seeds"]),
                    f"{r['n_params']:,}" if r["n_params"] else "—",
                    _speed(r["tokens_per_s"]),
                ]
                for r in rows
            ],
        ),
    ]


def _family_cost_cells(row: dict[str, Any], costs: list[str]) -> list[str]:
    cells = []
    for name in costs:
        c = row["costs"][name]
        cells += [
            "—" if c["lowest"] is None else f"{c['lowest']:.{COST_DIGITS}f}, {c['median']:.{COST_DIGITS}f}",
            _cost_pm(c["validated"]),
        ]
    return cells


def _costs(facts: dict[str, Any]) -> list[str]:
    """The study's cost objectives (none for a single-objective study)."""
    return facts.get("objectives", ["val_bpc"])[1:]


def _validated_blocks(facts: dict[str, Any]) -> list[tuple]:
    rows = facts["validated"]
    if not rows:
        return [
            (
                "p",
                "Not validated yet (see the verdict)."
                if facts["validation_study"] is None
                else "No configuration has a COMPLETE validation trial yet.",
            )
        ]
    seeds, costs = ", ".join(str(x) for x in facts["seeds"]), _costs(facts)
    return [
        (
            "p",
            f"Each configuration retrained from scratch with fresh seeds ({seeds}) in study `{facts['validation_study']}`; "
            "best validated mean first." + (f" Costs ({COST_MEANING}) are means over the same seeds." if costs else ""),
        ),
        (
            "table",
            [
                "search trial",
                "heads",
                "family",
                "mixed sizes",
                "why",
                "search val_bpc",
                _mean_header(costs),
                *_cost_headers(costs),
                "seeds",
                "parameters",
                "tokens/s",
            ],
            [
                [
                    str(r["source_trial"]),
                    r["heads"] + (" (baseline)" if r["baseline"] else ""),
                    r["family"],
                    "yes" if r["mixed"] else "no",
                    ", ".join(r["why"]),
                    _bpc(r["search_value"]),
                    _pm(r["mean"], r["low"], r["high"]),
                    *(_cost_pm(r.get("costs", {}).get(c)) for c in costs),
                    str(len(r["seeds"])),
                    f"{r['n_params']:,}",
                    _speed(r["tokens_per_s"]),
                ]
                for r in rows
            ],
        ),
    ]


def _importance_blocks(facts: dict[str, Any]) -> list[tuple]:
    imp = facts["importances"]
    if not imp["params"]:
        return [("p", f"Parameter importances: {imp['note']}")]
    listed = lambda params: ", ".join(f"{k} {v:.3f}" for k, v in params.items()) or "none varied"  # noqa: E731
    if "costs" not in imp:
        return [
            ("p", f"Parameter importances ({imp['method']}, over the COMPLETE search trials): {listed(imp['params'])}.")
        ]
    # one objective at a time: which parameters reach the lowest 10% of val_bpc, and of each cost
    per = {"val_bpc": imp["params"], **imp["costs"]}
    return [
        (
            "p",
            f"Parameter importances ({imp['method']}, over the COMPLETE search trials, one objective at a time): "
            + "; ".join(f"for {name}, {listed(params)}" for name, params in per.items())
            + ".",
        )
    ]


def _any_state(facts: dict[str, Any], state: str) -> bool:
    return state in ("COMPLETE", "PRUNED", "FAIL") or any(c and c[state] for c in facts["trials"].values())


def _bpc(x: float | None) -> str:
    return "—" if x is None else f"{x:.{DIGITS}f}"


def _pm(mean: float, low: float | None, high: float | None, digits: int = DIGITS) -> str:
    if low is None or high is None:
        return f"{mean:.{digits}f} (one seed: no interval)"
    return f"{mean:.{digits}f} ± {(high - low) / 2:.{digits}f}"


def _span(low: float | None, high: float | None, digits: int = DIGITS) -> str:
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return "unbounded (one seed)"
    return f"{low:+.{digits}f} to {high:+.{digits}f}"


def _speed(x: float | None) -> str:
    return "—" if not x else f"{x:,.0f}"


def _mib(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"


def _opt(n: int | None, what: str) -> str:
    return f"{n:,} {what}" if n else f"all {what}"


def _hours(h: float) -> str:
    if h >= 1:
        return f"{h:.2f} h"
    return f"{h * 60:.1f} min" if h * 60 >= 1 else f"{h * 3600:.1f} s"


def _device(name: str) -> str:
    return {"cpu": "CPU", "cuda": "GPU (cuda)", "unrecorded": "not recorded (never configured)"}.get(name, name)


CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
code, pre { font-family: ui-monospace, monospace; background: #f6f6f6; }
pre { padding: 0.8em; overflow-x: auto; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; }
.verdict { font-size: 1.1em; background: #fff8e1; padding: 0.8em; border-left: 4px solid #f0b400; }
"""


def render_html(facts: dict[str, Any], blocks: list[tuple]) -> str:
    parts = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2"):
            parts.append(f"<{kind}>{_inline(b[1])}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{_inline(b[1])}</p>")
        elif kind == "verdict":
            parts.append(f'<p class="verdict" id="verdict">{_inline(b[1])}</p>')
        elif kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b[1])
            body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in b[2])
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "chart":
            c = b[1]
            if c.png is None:
                parts.append(f"<h3>{html.escape(c.title)}</h3><p>{_inline(c.note)}</p>")
            else:
                src = "data:image/png;base64," + base64.b64encode(c.png).decode("ascii")
                parts.append(
                    f'<figure id="chart-{c.key}"><img src="{src}" alt="{html.escape(c.title)}">'
                    f"<figcaption>{_inline(c.note)}</figcaption></figure>"
                )
        elif kind == "code":
            parts.append("<pre><code>" + "\n".join(html.escape(line) for line in b[1]) + "</code></pre>")
    title = html.escape(f"Study {facts['study']}: report")
    # the empty data: icon keeps the browser from asking for /favicon.ico (a console error offline)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{title}</title>\n'
        f'<link rel="icon" href="data:,">\n<style>{CSS}</style>\n</head>\n<body>\n'
        + "\n".join(parts)
        + "\n</body>\n</html>\n"
    )


def _inline(text: str) -> str:
    """Escaped text with `code` spans."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))


def render_markdown(blocks: list[tuple]) -> str:
    lines: list[str] = []
    for b in blocks:
        kind = b[0]
        if kind == "h1":
            lines += [f"# {b[1]}", ""]
        elif kind == "h2":
            lines += [f"## {b[1]}", ""]
        elif kind in ("p", "verdict"):
            lines += [b[1], ""]
        elif kind == "table":
            cell = lambda c: c.replace("|", "\\|")  # noqa: E731
            lines += ["| " + " | ".join(cell(h) for h in b[1]) + " |", "|" + " --- |" * len(b[1])]
            lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in b[2]] + [""]
        elif kind == "chart" and b[1].png is None:
            lines += [f"{b[1].title}: {b[1].note}", ""]
        elif kind == "code":
            lines += ["```bash", *b[1], "```", ""]
    return "\n".join(lines)


__all__ = [
    "write_report",
    "Report",
    "gather",
    "family_rows",
    "verdict",
    "draw_charts",
    "document",
    "render_html",
    "render_markdown",
]
