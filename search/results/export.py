"""Reading results back: export a trial for full training, show the top trials, list the studies."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from mfha.config import ModelConfig, TrainConfig, steps_for_tokens
from mfha.errors import ConfigError
from search.results.evidence import Validated, validated_rows
from search.store.storage import make_folder, open_study
from search.study.trials import objective_names, ranked

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
    evidence = validated_rows(study)
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
        by_trial = {v.source_trial: v for v in validated_rows(study)}
        picks = [(out / f"pareto{i + 1}-trial{t.number}", t, by_trial.get(t.number)) for i, t in enumerate(front)]
        return _export_all(study, picks, runs)
    assert max_cost is not None  # without --pareto, export() calls this for --max-cost only
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
    evidence = [v for v in validated_rows(study) if cost in v.costs]
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
    trials_within = [t for t in done if t.values[i] <= max_cost]
    if not trials_within:
        cheapest_trial = min(done, key=lambda t: (t.values[i], t.number))
        raise ConfigError(
            f"no COMPLETE trial has {cost} <= {max_cost:g} (the cheapest, trial {cheapest_trial.number}, has "
            f"{cheapest_trial.values[i]:.3f}); raise --max-cost."
        )
    return _export_all(study, [(out, trials_within[0], None)], runs)


def _export_all(
    study: optuna.Study, picks: list[tuple[Path, FrozenTrial, Validated | None]], runs: Path
) -> list[Exported]:
    # every folder and trial is checked before any is written, so a refusal leaves nothing half-exported
    replaced = [_earlier_export(folder) for folder, _, _ in picks]
    for _, t, _ in picks:
        if "model_config" not in t.user_attrs or "train_config" not in t.user_attrs:
            raise ConfigError(
                f"trial {t.number} of study {study.study_name!r} holds no model_config (the study was not made by "
                f"run_search.py run), so there is no model to export; export a study that run_search.py ran."
            )
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
    return {
        **rest,
        "max_steps": steps_for_tokens(full_overrides["tokens"], batch_size=tc.batch_size, seq_len=tc.seq_len),
    }


def _export_one(study: optuna.Study, t: FrozenTrial, folder: Path, runs: Path, evidence: Validated | None) -> Exported:
    make_folder(folder, "--out folder {folder}")
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
    q = lambda p: shlex.quote(str(p))
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


__all__ = ["export_trials", "Exported"]
