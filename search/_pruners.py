"""One pruner for the study: memory first, then the study file's pruner for lagging loss.

Memory is judged from a trial's user attrs, so it works through plain `trial.should_prune()`:
`forecast_peak_mib` (set before anything is allocated) over the limit prunes the trial before the
model exists. Whoever prunes records a `prune_reason` with the numbers (see `explain`).
"""

from __future__ import annotations

import statistics
import warnings

import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState

from search._study_file import PruningConfig

MIB = 2**20
FORECAST_ATTR = "forecast_peak_mib"


def fmt_bytes(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / MIB:.0f} MiB"


class MemoryAwarePruner(BasePruner):
    """Prunes when the forecast peak memory exceeds `memory_limit` bytes, else defers to `loss_pruner`."""

    def __init__(
        self,
        loss_pruner: BasePruner,
        *,
        memory_limit: int | None,
        kind: str = "none",
        memory_name: str = "RAM",
        step_unit: str = "steps",
    ) -> None:
        if memory_limit is not None and memory_limit <= 0:
            raise ValueError(f"memory_limit must be positive or None, but got {memory_limit=}.")
        if step_unit not in ("steps", "tokens"):
            raise ValueError(f"step_unit must be 'steps' or 'tokens', but got {step_unit=}.")
        self.loss_pruner = loss_pruner
        self.memory_limit = memory_limit
        self.kind = kind
        self.memory_name = memory_name
        self.step_unit = step_unit

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if self.forecast_verdict(trial.user_attrs.get(FORECAST_ATTR)) is not None:
            return True
        if trial.last_step is None:
            return False
        return self.loss_pruner.prune(study, trial)

    def forecast_verdict(self, forecast_mib: float | None) -> str | None:
        """The prune reason when a forecast peak (MiB) is over the limit, else None."""
        if self.memory_limit is None or forecast_mib is None or forecast_mib * MIB <= self.memory_limit:
            return None
        return (
            f"{self.memory_name} forecast {fmt_bytes(forecast_mib * MIB)} > limit {fmt_bytes(self.memory_limit)}: "
            f"pruned before allocation"
        )

    def measured_verdict(
        self, measured_bytes: int, step: int | None, *, limit: int | None = None, name: str | None = None
    ) -> str | None:
        """The prune reason when the trial process's measured memory is over the limit, else None."""
        limit = self.memory_limit if limit is None else limit
        if limit is None or measured_bytes <= limit:
            return None
        at = f" after step {step}" if step is not None else " before the first evaluation"
        return f"{name or self.memory_name} measured {fmt_bytes(measured_bytes)} > limit {fmt_bytes(limit)}{at}: trial process stopped"

    def loss_reason(self, study: optuna.Study, number: int, step: int, value: float) -> str:
        """Why the loss pruner stopped trial `number` at `step`: its value against the trials it was compared with."""
        # median, percentile and wilcoxon compare with COMPLETE trials; the rung pruners with every finished one
        rungs = self.kind in ("successive_halving", "hyperband")
        states = (TrialState.COMPLETE, TrialState.PRUNED) if rungs else (TrialState.COMPLETE,)
        others = [
            t.intermediate_values[step]
            for t in study.get_trials(deepcopy=False, states=states)
            if t.number != number and step in t.intermediate_values
        ]
        at = f"step {step}" if self.step_unit == "steps" else f"{step:,} tokens"
        head = f"lagging loss ({self.kind} pruner): val_bpc {value:.4f} at {at}"
        if not others:
            return head
        which = "finished" if rungs else "complete"
        return (
            f"{head}; {which} trials at {at}: median {statistics.median(others):.4f}, "
            f"best {min(others):.4f} (n={len(others)})"
        )


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


__all__ = ["MemoryAwarePruner", "make_loss_pruner", "fmt_bytes", "FORECAST_ATTR", "MIB"]
