"""The study file's loss pruner ([pruning] pruner): Optuna's own, over training steps or tokens.

`search.run.memory.MemoryAwarePruner` wraps it with the RAM decision.
"""

from __future__ import annotations

import warnings

import optuna
from optuna.pruners import BasePruner

from search.study.types import PruningConfig


def make_loss_pruner(p: PruningConfig, *, max_steps: int, eval_interval: int) -> BasePruner:
    """The study file's loss pruner. Its steps are Optuna steps: training steps, or tokens in a study
    with a token budget (`max_steps` is then the budget and `eval_interval` the tokens between evaluations)."""
    min_resource = p.min_resource or eval_interval
    if p.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_steps, interval_steps=p.interval_steps
        )
    if p.pruner == "percentile":
        return optuna.pruners.PercentilePruner(
            p.percentile,
            n_startup_trials=p.startup_trials,
            n_warmup_steps=p.warmup_steps,
            interval_steps=p.interval_steps,
        )
    if p.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_resource, reduction_factor=p.reduction_factor)
    if p.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=min_resource, max_resource=max_steps, reduction_factor=p.reduction_factor
        )
    if p.pruner == "wilcoxon":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # its startup counts reported evaluations, not training steps
            return optuna.pruners.WilcoxonPruner(
                p_threshold=p.p_threshold, n_startup_steps=max(1, p.warmup_steps // eval_interval)
            )
    return optuna.pruners.NopPruner()


__all__ = ["make_loss_pruner"]
