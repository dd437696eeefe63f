"""A multi-objective study (val_bpc, then costs) as the Optuna parts that assume one objective see it.

The costs are known only when a trial ends; what a trial reports while it trains is its val_bpc curve,
stored as its intermediate values (through the storage: `Trial.report` refuses a multi-objective
study). Optuna's pruners and TPE's ranking of pruned trials read `study.direction`, which a
multi-objective study refuses; these views answer it for that curve: minimize.
"""

from __future__ import annotations

import optuna
from optuna.study import StudyDirection


class _BpcView(optuna.Study):
    """One objective, val_bpc: what a loss pruner judges (lagging loss is about the bits/char curve
    alone, and a slow model that learns well should finish, so the front can show it)."""

    @property
    def directions(self) -> list[StudyDirection]:
        return [StudyDirection.MINIMIZE]


class _PrunedByBpcView(optuna.Study):
    """Every objective for the sampler, and `direction` for the one place TPE asks it: ranking PRUNED
    trials by their last intermediate value, which here is a val_bpc."""

    @property
    def direction(self) -> StudyDirection:
        return StudyDirection.MINIMIZE


def val_bpc_view(study: optuna.Study) -> optuna.Study:
    """`study` itself when it has one objective, else the same study seen as minimizing val_bpc alone."""
    return _view(study, _BpcView)


def sampler_view(study: optuna.Study) -> optuna.Study:
    """`study` itself when it has one objective, else the same study whose pruned trials rank by val_bpc."""
    return _view(study, _PrunedByBpcView)


def _view(study: optuna.Study, kind: type[optuna.Study]) -> optuna.Study:
    if len(study.directions) == 1:
        return study
    view = object.__new__(kind)
    view.__dict__.update(study.__dict__)  # the same storage, study id and caches
    return view


__all__ = ["val_bpc_view", "sampler_view"]
