"""The study as tables: `show`'s plain text (and CSV), the validated table, `studies`, and pandas
frames for users who want them (pandas is imported only there).
"""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from mfha.errors import ConfigError
from search.results.evidence import validated_rows
from search.store.storage import make_storage, open_study
from search.study.trials import objective_names

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
    evidence = {v.source_trial: v for v in validated_rows(study)}
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
        for i, v in enumerate(validated_rows(study))
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


def study_file_text(storage_url: str, name: str) -> str:
    """The study file a study was last run with, as TOML (its storage URL without a password), so
    `show --study NAME --study-file > NAME.toml` gives back a file that resumes it."""
    import tomli_w

    study = open_study(storage_url, name)
    raw = study.user_attrs.get("study_file")
    if not isinstance(raw, dict):
        raise ConfigError(
            f"study {name!r} holds no study file (it was not created by run_search.py run); --study-file has none to print."
        )
    return tomli_w.dumps(raw).rstrip("\n")


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
    "COLUMNS",
    "columns",
    "show",
    "format_table",
    "trial_rows",
    "trials_frame",
    "studies_frame",
    "validated_table",
    "study_file_text",
]
