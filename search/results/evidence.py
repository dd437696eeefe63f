"""What a study's validation says: which configurations were retrained, and their means over seeds.

The search study NAME holds one trial per sampled configuration; its companion study
`NAME.validation` holds one COMPLETE trial per (configuration, fresh seed), with user attrs
`source_trial` and `seed`. Everything here reads those two studies and nothing else, so `show`,
`export` and the report agree on the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.results.stats import Interval, mean_interval
from search.study.trials import mixes_sizes, objective_names, validation_key, validation_name


@dataclass
class Validated:
    """One retrained configuration: its search trial and its results over the validation seeds."""

    source_trial: int
    heads: str
    family: str
    mixed: bool
    role: str | None  # "baseline" for an enqueued plain multi-head baseline
    n_params: int
    search_value: float | None
    seeds: list[int]
    values: list[float]  # final val_bpc per seed, in the order of `seeds`
    interval: Interval
    tokens_per_s: float | None  # mean over the validation trials
    trials: list[int] = field(default_factory=list)  # validation trial numbers
    costs: dict[str, Interval] = field(
        default_factory=dict
    )  # multi-objective: "train_cost" -> mean ± interval over the seeds
    curves: dict[int, dict[int, float]] = field(default_factory=dict)  # seed -> {step: val_bpc}

    @property
    def mean(self) -> float:
        return self.interval.mean


def validated(search: optuna.Study, validation: optuna.Study) -> list[Validated]:
    """Every configuration with at least one COMPLETE validation trial, best validated mean first."""
    by_number = {t.number: t for t in search.get_trials(deepcopy=False)}
    names = objective_names(validation)
    groups: dict[int, list[FrozenTrial]] = {}
    for t in validation.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        key = validation_key(t.user_attrs)
        # the configurations as searched, at the search's budget (other variants and budgets: their own rows)
        if key is not None and key[2] is None and key[3] is None:
            groups.setdefault(key[0], []).append(t)
    rows = []
    for source, ts in groups.items():
        ts.sort(key=lambda t: (t.user_attrs["seed"], t.number))
        seen, unique = set(), []
        for t in ts:  # a seed retrained twice (a race between machines) counts once
            if t.user_attrs["seed"] not in seen:
                seen.add(t.user_attrs["seed"])
                unique.append(t)
        src = by_number.get(source)
        a = (src.user_attrs if src is not None else None) or unique[0].user_attrs
        speeds = [t.user_attrs["tokens_per_s"] for t in unique if t.user_attrs.get("tokens_per_s")]
        rows.append(
            Validated(
                source_trial=source,
                heads=a.get("heads", ""),
                family=a.get("family", ""),
                mixed=mixes_sizes(a["model_config"]),
                role=a.get("role"),
                n_params=a.get("n_params", 0),
                search_value=src.values[0] if src is not None and src.state == TrialState.COMPLETE else None,
                seeds=[t.user_attrs["seed"] for t in unique],
                values=[t.values[0] for t in unique],
                interval=mean_interval([t.values[0] for t in unique]),
                tokens_per_s=sum(speeds) / len(speeds) if speeds else None,
                trials=[t.number for t in unique],
                curves={t.user_attrs["seed"]: dict(sorted(t.intermediate_values.items())) for t in unique},
                costs={name: mean_interval([t.values[i] for t in unique]) for i, name in enumerate(names) if i > 0},
            )
        )
    rows.sort(key=lambda r: (r.mean, r.source_trial))
    return rows


def load_validation(storage, search_name: str) -> optuna.Study | None:
    """The companion validation study, or None when the study was never validated."""
    name = validation_name(search_name)
    if name not in optuna.get_all_study_names(storage):
        return None
    return optuna.load_study(study_name=name, storage=storage)


def validated_rows(study: optuna.Study) -> list[Validated]:
    """The study's validated configurations (none when it was never validated), best mean first."""
    validation = load_validation(study._storage, study.study_name)
    return validated(study, validation) if validation is not None else []


__all__ = ["Validated", "validated", "validated_rows", "load_validation"]
