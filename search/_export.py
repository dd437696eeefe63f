"""Reading results back: export a trial for full training, show the top trials, list the studies."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field, replace
from difflib import get_close_matches
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from mfha.config import ModelConfig, TrainConfig
from mfha.errors import ConfigError
from search._evidence import Validated, load_validation, objective_names, ranked, validated
from search._storage import make_storage, mask_url

# [full_training] keys that do not change what `max_steps` steps of training compute
NEUTRAL_FOR_CHECK = ("max_steps", "eval_interval", "eval_tokens")
# what an export writes, all of it every time: a folder holding these alone, trial.json among them, is
# an earlier export that a new one replaces whole
EXPORT_FILES = (
    "model_config.json",
    "train_config.json",
    "trial_train_config.json",
    "tokenizer_settings.json",
    "trial.json",
)


@dataclass
class Exported:
    folder: Path
    trial_number: int
    value: float | None
    command: str  # full training, as the study file's [full_training] says
    check_command: str  # the trial's own training, to reproduce its val_bpc first
    evidence: Validated | None = None  # its validation over fresh seeds, when it was the basis of the pick
    replaced: str | None = None  # the earlier export this one overwrote, e.g. "trial 3 of study 'smoke'"
    costs: dict[str, float] = field(default_factory=dict)  # a multi-objective study's search costs, by name


def open_study(storage_url: str, name: str) -> optuna.Study:
    storage = make_storage(storage_url, heartbeat_interval=None, create=False)
    names = optuna.get_all_study_names(storage)
    if name not in names:
        near = get_close_matches(name, names, n=1)
        hint = (
            f"did you mean {near[0]!r}?"
            if near
            else (f"stored: {', '.join(sorted(names))}." if names else "it holds no study yet.")
        )
        raise ConfigError(f"--study {name!r} is not in {mask_url(storage_url)}; {hint}")
    return optuna.load_study(study_name=name, storage=storage)


def export_trials(
    storage_url: str,
    name: str,
    out: str | Path,
    *,
    trial: int | None = None,
    top: int | None = None,
    pareto: bool = False,
    max_cost: float | None = None,
    cost: str | None = None,
    runs: str | Path = "runs",
) -> list[Exported]:
    """Write model_config.json, train_config.json (full-training length), tokenizer settings and trial.json.

    One of: the best (validated, when the study was validated), `trial` N, the `top` K, every trial on
    the Pareto front (`pareto`), or the best val_bpc whose `cost` is at most `max_cost`.
    """
    chosen = [
        flag
        for flag, v in (("--trial", trial), ("--top", top), ("--pareto", pareto or None), ("--max-cost", max_cost))
        if v is not None
    ]
    if len(chosen) > 1:
        raise ConfigError(f"pass one of --trial, --top, --pareto and --max-cost, but got {' and '.join(chosen)}.")
    if top is not None and top < 1:
        raise ConfigError(f"--top must be a positive integer, but got {top=}.")
    if max_cost is not None and not (isinstance(max_cost, (int, float)) and max_cost > 0 and max_cost != float("inf")):
        raise ConfigError(
            f"--max-cost must be a positive number (a cost ratio, 1.0 = the reference model), but got {max_cost=}."
        )
    study = open_study(storage_url, name)
    out = Path(out)
    if pareto or max_cost is not None:
        return _export_tradeoff(study, out, Path(runs), pareto=pareto, max_cost=max_cost, cost=cost)
    if cost is not None:
        raise ConfigError("--cost names the cost that --max-cost limits; pass --max-cost too, or drop --cost.")
    if trial is not None:
        found = [t for t in study.get_trials(deepcopy=False) if t.number == trial]
        if not found:
            raise ConfigError(f"--trial {trial} is not in study {name!r}, which has trials 0..{len(study.trials) - 1}.")
        if "model_config" not in found[0].user_attrs:
            raise ConfigError(
                f"--trial {trial} never got a configuration (state {found[0].state.name}, {found[0].user_attrs.get('prune_reason', 'no reason')}); pick another trial."
            )
        return _export_all(study, [(out, found[0], None)], Path(runs))
    # validated means over fresh seeds beat one lucky search value: they pick when they exist
    evidence = _validated(study)
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    best = [by_number[v.source_trial] for v in evidence] if evidence else ranked(study)
    if not best:
        raise ConfigError(f"study {name!r} has no COMPLETE trial to export yet; run it longer or pass --trial N.")
    ranks = best[:1] if top is None else best[:top]
    folders = [out] if top is None else [out / f"rank{i + 1}-trial{t.number}" for i, t in enumerate(ranks)]
    return _export_all(
        study,
        [(folder, t, evidence[i] if evidence else None) for i, (folder, t) in enumerate(zip(folders, ranks))],
        Path(runs),
    )


def _export_tradeoff(
    study: optuna.Study, out: Path, runs: Path, *, pareto: bool, max_cost: float | None, cost: str | None
) -> list[Exported]:
    """--pareto: every trial on the Pareto front, best val_bpc first; --max-cost: the best val_bpc within the limit."""
    names = objective_names(study)
    flag = "--pareto" if pareto else "--max-cost"
    if len(names) == 1:
        raise ConfigError(
            f'{flag} needs a study with a cost objective (study.objectives = ["val_bpc", "train_cost"]), '
            f"but study {study.study_name!r} minimizes val_bpc alone; export its best with no flag."
        )
    if pareto:
        front = sorted(study.best_trials, key=lambda t: (t.values[0], t.number))
        if cost is not None:
            raise ConfigError("--cost names the cost that --max-cost limits; drop it with --pareto.")
        if not front:
            raise ConfigError(f"study {study.study_name!r} has no COMPLETE trial to export yet; run it longer.")
        evidence = {v.source_trial: v for v in _validated(study)}
        picks = [(out / f"pareto{i + 1}-trial{t.number}", t, evidence.get(t.number)) for i, t in enumerate(front)]
        return _export_all(study, picks, runs)
    costs = names[1:]
    if cost is None and len(costs) > 1:
        raise ConfigError(
            f"--max-cost needs --cost: study {study.study_name!r} has the costs {', '.join(costs)}; pass --cost {costs[0]}, say."
        )
    cost = cost or costs[0]
    if cost not in costs:
        raise ConfigError(f"--cost must be one of the study's costs ({', '.join(costs)}), but got --cost {cost!r}.")
    i = names.index(cost)
    # validated means over fresh seeds, when the study was validated: the cost too is then a mean
    evidence = [v for v in _validated(study) if cost in v.costs]
    if evidence:
        within = [v for v in evidence if v.costs[cost].mean <= max_cost]
        if not within:
            cheapest = min(evidence, key=lambda v: v.costs[cost].mean)
            raise ConfigError(
                f"no validated configuration has {cost} <= {max_cost:g} (the cheapest, trial {cheapest.source_trial}, "
                f"has {cheapest.costs[cost].mean:.3f}); raise --max-cost."
            )
        best = within[0]  # validated() sorts by mean val_bpc
        t = next(t for t in study.get_trials(deepcopy=False) if t.number == best.source_trial)
        return _export_all(study, [(out, t, best)], runs)
    done = ranked(study)
    if not done:
        raise ConfigError(f"study {study.study_name!r} has no COMPLETE trial to export yet; run it longer.")
    within = [t for t in done if t.values[i] <= max_cost]
    if not within:
        cheapest = min(done, key=lambda t: (t.values[i], t.number))
        raise ConfigError(
            f"no COMPLETE trial has {cost} <= {max_cost:g} (the cheapest, trial {cheapest.number}, has "
            f"{cheapest.values[i]:.3f}); raise --max-cost."
        )
    return _export_all(study, [(out, within[0], None)], runs)


def _export_all(
    study: optuna.Study, picks: list[tuple[Path, FrozenTrial, Validated | None]], runs: Path
) -> list[Exported]:
    # every folder is checked before any is written, so a refused one leaves nothing half-exported
    replaced = [_earlier_export(folder) for folder, _, _ in picks]
    return [
        replace(_export_one(study, t, folder, runs, evidence), replaced=before)
        for (folder, t, evidence), before in zip(picks, replaced)
    ]


def _earlier_export(folder: Path) -> str | None:
    """None for a new or empty folder, "trial N of study 'S'" for an earlier export; anything else is
    refused, so an export never lands among a user's own files."""
    if not folder.is_dir():
        return None  # new (a file in the way fails in mkdir, with its own message)
    entries = sorted(p.name for p in folder.iterdir())
    if not entries:
        return None
    record = _trial_record(folder / "trial.json")
    if record is None or not set(entries) <= set(EXPORT_FILES):
        shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        raise ConfigError(
            f"--out must be a new or empty folder or an earlier export (one with its trial.json), but got "
            f"--out {str(folder)!r}, which holds {shown}; pass --out with another folder."
        )
    return f"trial {record['number']} of study {record['study']!r}"


def _trial_record(path: Path) -> dict | None:
    """An earlier export's trial.json, or None when the file is missing or is not one."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and {"study", "number"} <= set(record) else None


def _in_steps(full_overrides: dict, tc: TrainConfig) -> dict:
    """[full_training] with a token count turned into this trial's steps (its batch and sequence length)."""
    if "tokens" not in full_overrides:
        return dict(full_overrides)
    rest = {k: v for k, v in full_overrides.items() if k != "tokens"}
    return {**rest, "max_steps": -(-full_overrides["tokens"] // (tc.batch_size * tc.seq_len))}


def _validated(study: optuna.Study) -> list[Validated]:
    validation = load_validation(study._storage, study.study_name)
    return validated(study, validation) if validation is not None else []


def _export_one(study: optuna.Study, t: FrozenTrial, folder: Path, runs: Path, evidence: Validated | None) -> Exported:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create --out folder {str(folder)!r}: {e.strerror}.") from None
    mc = ModelConfig.from_dict(t.user_attrs["model_config"])
    tc = TrainConfig.from_dict(t.user_attrs["train_config"])
    full_overrides = study.user_attrs.get("full_training", {})
    full = TrainConfig.from_dict({**tc.to_dict(), **_in_steps(full_overrides, tc)})
    mc.save(folder / "model_config.json")
    full.save(folder / "train_config.json")
    tc.save(folder / "trial_train_config.json")
    settings = {
        "kind": "character" if tc.tokenizer_vocab is None else "bpe",
        "tokenizer_vocab": tc.tokenizer_vocab,
        "vocab_size": mc.vocab_size,
        "dataset": tc.dataset,
        "text_column": tc.text_column,
        "max_train_stories": tc.max_train_stories,
        "max_train_tokens": tc.max_train_tokens,
        "note": "mfha.train retrains this tokenizer from the same slice (deterministic; cached)",
    }
    (folder / "tokenizer_settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    names = objective_names(study)
    record = {
        "study": study.study_name,
        "number": t.number,
        "state": t.state.name,
        "value": t.values[0] if t.values else None,
        "values": dict(zip(names, t.values)) if t.values else None,
        "params": t.params,
        "user_attrs": t.user_attrs,
        "intermediate_values": {str(k): v for k, v in sorted(t.intermediate_values.items())},
        "datetime_start": t.datetime_start.isoformat() if t.datetime_start else None,
        "datetime_complete": t.datetime_complete.isoformat() if t.datetime_complete else None,
        "duration_s": t.duration.total_seconds() if t.duration else None,
        "full_training": full_overrides,
    }
    if evidence is not None:
        iv = evidence.interval
        record["validation"] = {
            "mean": iv.mean,
            "low": iv.low,
            "high": iv.high,
            "confidence": 0.95,
            "seeds": evidence.seeds,
            "values": evidence.values,
            "study": study.study_name + ".validation",
            **{name: {"mean": c.mean, "low": c.low, "high": c.high} for name, c in evidence.costs.items()},
        }
    (folder / "trial.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    run_name = folder.name if folder.name else "export"
    q = lambda p: shlex.quote(str(p))  # noqa: E731
    command = f"python -m mfha.train --from {q(folder)} --out {q(runs / run_name)}"
    same = all(getattr(full, k) == getattr(tc, k) for k in tc.to_dict() if k not in NEUTRAL_FOR_CHECK)
    steps = t.user_attrs.get("steps") or tc.max_steps
    # the trial's thread count too: another count sums floats in another order (on the smoke study,
    # 2 threads instead of the trial's 1 moved val_bpc by 0.5%; 1 reproduced it to the last digit)
    threads = f" --threads {t.user_attrs['threads']}" if t.user_attrs.get("threads") and tc.device != "cuda" else ""
    configs = (
        f"--from {q(folder)} --max-steps {steps}"
        if same
        else f"--model-config {q(folder / 'model_config.json')} --train-config {q(folder / 'trial_train_config.json')}"
    )
    check = f"python -m mfha.train {configs}{threads} --out {q(runs / (run_name + '-check'))}"
    return Exported(
        folder,
        t.number,
        t.values[0] if t.values else None,
        command,
        check,
        evidence,
        costs=dict(zip(names[1:], t.values[1:])) if t.values else {},
    )


COLUMNS = [
    "number",
    "state",
    "val_bpc",
    "validated",
    "role",
    "n_params",
    "n_layers",
    "dim",
    "heads",
    "family",
    "mlp_mult",
    "lr",
    "batch_size",
    "tokens_per_s",
    "peak_mem_mib",
    "forecast_peak_mib",
    "duration_s",
    "reason",
]


def columns(study: optuna.Study) -> list[str]:
    """COLUMNS, with a multi-objective study's costs (search and validated) after val_bpc."""
    costs = objective_names(study)[1:]
    i = COLUMNS.index("validated") + 1
    return COLUMNS[:i] + costs + [f"validated_{c}" for c in costs] + COLUMNS[i:]


def trial_rows(study: optuna.Study) -> list[dict]:
    """One row per trial, the columns a person compares trials by (COLUMNS)."""
    rows = []
    costs = objective_names(study)[1:]
    evidence = {v.source_trial: v for v in _validated(study)}
    for t in study.get_trials(deepcopy=False):
        a, p = t.user_attrs, t.params
        v = evidence.get(t.number)
        last = t.intermediate_values[t.last_step] if t.last_step is not None else None
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "val_bpc": t.values[0] if t.state == TrialState.COMPLETE else last,
                **{name: a.get(name) for name in costs},
                **{
                    f"validated_{name}": v.costs[name].text(3) if v is not None and name in v.costs else None
                    for name in costs
                },
                # the mean over the validation seeds ± its 95% interval, and how many seeds
                "validated": f"{v.interval.text()} ({v.interval.n})" if v is not None else None,
                "role": a.get("role"),
                "n_params": a.get("n_params"),
                "n_layers": p.get("n_layers"),
                "dim": p.get("dim"),
                "heads": a.get("heads"),
                "family": a.get("family"),
                "mlp_mult": p.get("mlp_mult", (a.get("model_config") or {}).get("mlp_mult")),
                "lr": p.get("lr", (a.get("train_config") or {}).get("lr")),
                "batch_size": p.get("batch_size", (a.get("train_config") or {}).get("batch_size")),
                "tokens_per_s": a.get("tokens_per_s"),
                "peak_mem_mib": a.get("peak_mem_mib"),
                "forecast_peak_mib": a.get("forecast_peak_mib"),
                "duration_s": round(t.duration.total_seconds(), 2) if t.duration else None,
                "reason": a.get("prune_reason")
                or a.get("fail_reason")
                or (f"same as trial {a['reused_from']}" if "reused_from" in a else ""),
            }
        )
    return rows


def validated_table(storage_url: str, name: str) -> str:
    """The validated configurations, best mean first: the answer of `validate`."""
    study = open_study(storage_url, name)
    rows = [
        {
            "rank": i + 1,
            "trial": v.source_trial,
            "heads": v.heads,
            "family": v.family,
            "role": v.role,
            "n_params": v.n_params,
            "validated": v.interval.text(),
            **{name: c.text(3) for name, c in v.costs.items()},
            "seeds": " ".join(map(str, v.seeds)),
            "search_val_bpc": v.search_value,
            "tokens_per_s": round(v.tokens_per_s) if v.tokens_per_s else None,
        }
        for i, v in enumerate(_validated(study))
    ]
    if not rows:
        return f"study {name!r} has no validated configuration yet; run: python run_search.py validate --study {name}"
    table = format_table(rows, list(rows[0]))
    return f"validated (mean val_bpc ± 95% interval over fresh seeds):\n{table}"


def trials_frame(study: optuna.Study):
    """`trial_rows` as a pandas DataFrame."""
    import pandas as pd

    return pd.DataFrame(trial_rows(study), columns=columns(study))


def show(storage_url: str, name: str, *, top: int = 10, csv: str | Path | None = None) -> str:
    """The top `top` trials (COMPLETE by val_bpc, then the rest by number) as text; --csv gets every trial.

    A plain table rather than pandas': the command's time is mostly imports, and pandas' is 0.6 s
    of about 2 s with 1,000 trials.
    """
    if top < 1:
        raise ConfigError(f"--top must be a positive integer, but got {top=}.")
    study = open_study(storage_url, name)
    rows = trial_rows(study)
    if csv is not None:
        _write_csv(csv, rows, columns(study))
    if not rows:
        return f"study {name!r} has no trials yet."
    rows.sort(key=lambda r: (r["state"] != "COMPLETE", r["val_bpc"] is None, r["val_bpc"] or 0.0, r["number"]))
    return format_table(rows[:top], columns(study))


def format_table(rows: list[dict], columns: list[str], *, max_width: int = 48) -> str:
    """Right-aligned text columns: numbers from 1,000 up whole, smaller ones to 4 significant digits, None blank."""

    def cell(v) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.0f}" if abs(v) >= 1e3 else f"{v:.4g}"
        text = str(v)
        return text if len(text) <= max_width else text[: max_width - 3] + "..."

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = [" ".join(c.rjust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += [" ".join(v.rjust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def _write_csv(path: str | Path, rows: list[dict], fieldnames: list[str]) -> None:
    import csv as csv_module

    try:
        with open(path, "w", newline="") as f:
            writer = csv_module.DictWriter(f, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)
    except OSError as e:
        raise ConfigError(f"cannot write --csv {str(path)!r}: {e.strerror}.") from None


def studies_frame(storage_url: str):
    import pandas as pd

    storage = make_storage(storage_url, heartbeat_interval=None, create=False)
    rows = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=True):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        states = [t.state for t in study.get_trials(deepcopy=False)]
        best = summary.best_trial
        rows.append(
            {
                "study": summary.study_name,
                "trials": len(states),
                **{
                    s.name.lower(): states.count(s)
                    for s in (
                        TrialState.COMPLETE,
                        TrialState.PRUNED,
                        TrialState.FAIL,
                        TrialState.RUNNING,
                        TrialState.WAITING,
                    )
                },
                "best_val_bpc": best.values[0] if best else None,
                "best_trial": best.number if best else None,
                "started": summary.datetime_start.strftime("%Y-%m-%d %H:%M") if summary.datetime_start else None,
            }
        )
    return pd.DataFrame(rows)


__all__ = [
    "export_trials",
    "objective_names",
    "columns",
    "show",
    "format_table",
    "trial_rows",
    "trials_frame",
    "studies_frame",
    "open_study",
    "ranked",
    "Exported",
]
