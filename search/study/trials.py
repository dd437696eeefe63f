"""What a study's trials are: the roles and names both the run and the results read.

A search study NAME holds one trial per sampled configuration (`role = "baseline"` for the plain
multi-head configurations enqueued first); its companion `NAME.validation` retrains some of them.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from mfha.heads import HeadSpec

# trials that count towards n_trials: they ran to a verdict (a FAIL is retried, a WAITING one queued)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
VALIDATION_SUFFIX = ".validation"
BASELINE = "baseline"


def validation_name(search_name: str) -> str:
    return search_name + VALIDATION_SUFFIX


def validation_key(attrs: dict[str, Any]) -> tuple[int, int, str | None, int | None] | None:
    """What a validation trial retrains, from its user attrs: (search trial, seed, variant, budget_tokens).
    `variant` None is the configuration as searched; `budget_tokens` None is the search's own budget. None
    for a trial that holds no key yet (created by `optimize`, before it took one)."""
    if "source_trial" not in attrs or "seed" not in attrs:
        return None
    return int(attrs["source_trial"]), int(attrs["seed"]), attrs.get("variant"), attrs.get("budget_tokens")


def mixes_sizes(model_config: dict) -> bool:
    """True when some layer has heads of more than one size (MFHA); False for plain multi-head layers."""
    heads = model_config["heads"]
    specs = heads if isinstance(heads, list) else [heads]
    for s in specs:
        sizes = HeadSpec.from_dict(dict(s)).sizes
        assert sizes is not None  # HeadSpec.__post_init__ derives it for every family
        if len(set(sizes)) > 1:
            return True
    return False


def objective_names(study: optuna.Study) -> list[str]:
    """What the study minimizes: ["val_bpc"], or ["val_bpc", "train_cost"] (a multi-objective study)."""
    return list(study.metric_names or ["val_bpc"])


def ranked(study: optuna.Study) -> list[FrozenTrial]:
    """COMPLETE trials, best (lowest val_bpc, the first objective) first."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(done, key=lambda t: (t.values[0], t.number))


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The COMPLETE trial with the lowest val_bpc (the first objective of a multi-objective study)."""
    return next(iter(ranked(study)), None)


def objective_text(study: optuna.Study, trial: FrozenTrial) -> str:
    """A COMPLETE trial's values by name: "val_bpc 1.2345" or "val_bpc 1.2345, train_cost 0.871"."""
    names = objective_names(study)
    return ", ".join(f"{n} {v:.4f}" if i == 0 else f"{n} {v:.3f}" for i, (n, v) in enumerate(zip(names, trial.values)))


__all__ = [
    "FINISHED",
    "best_trial",
    "BASELINE",
    "VALIDATION_SUFFIX",
    "validation_name",
    "validation_key",
    "mixes_sizes",
    "objective_names",
    "objective_text",
    "ranked",
]
