"""The RAM decision, in one place: the limits a run resolves, the forecast before anything is
allocated, the watch of a running trial process, and the pruner's verdicts with their numbers.

The forecast and measurement themselves are `mfha.memory`'s; this module decides with them. On the
CPU the limit is the trial process's RSS (forecast from the framework baseline a real trial process
measures once per run); on CUDA it is torch's GPU memory (the child enforces it), with the RAM
limit still watched.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass
from pathlib import Path

import optuna
import psutil
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState

from mfha.config import ModelConfig, TrainConfig
from mfha.errors import ConfigError
from search.run.forkserver import start_forkserver
from search.run.workers import worker_threads
from search.study.pruners import make_loss_pruner
from search.study.space import SearchSpace
from search.study.types import StudyConfig

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


@dataclass
class Limits:
    """A run's memory limits (bytes) and the CPU forecast's framework baseline."""

    ram: int
    gpu: int | None
    baseline: int | None


def resolve_limits(config: StudyConfig, space: SearchSpace, device: str, *, workers: int, cache: Path) -> Limits:
    """The run's limits; one ConfigError line when even the smallest model of the space cannot fit."""
    from mfha.memory import estimate_training_peak

    p = config.pruning
    ram_limit = resolve_ram_limit(p.ram_limit, p.ram_auto_share, workers)
    gpu_limit = resolve_gpu_limit(p.gpu_memory_limit, p.ram_auto_share, workers) if device == "cuda" else None
    baseline = trial_baseline(config, cache, workers) if device == "cpu" else None
    memory_limit = ram_limit if device == "cpu" else gpu_limit
    if memory_limit is not None:
        smallest = smallest_forecast(space, device, baseline, estimate_training_peak)
        if smallest is not None and smallest > memory_limit:
            key = "pruning.ram_limit" if device == "cpu" else "pruning.gpu_memory_limit"
            raise ConfigError(
                f"{key}={fmt_bytes(memory_limit)} is below the smallest model in the space (forecast "
                f"{fmt_bytes(smallest)}{', framework ' + fmt_bytes(baseline) if baseline else ''}); raise {key} or shrink the space/batch."
            )
    return Limits(ram_limit, gpu_limit, baseline)


def make_pruner(config: StudyConfig, device: str, limits: Limits) -> MemoryAwarePruner:
    """Memory first (the device's limit), then the study file's loss pruner."""
    p = config.pruning
    return MemoryAwarePruner(
        make_loss_pruner(p, max_steps=config.max_resource, eval_interval=config.eval_every),
        memory_limit=limits.ram if device == "cpu" else limits.gpu,
        kind=p.pruner,
        memory_name="RAM" if device == "cpu" else "GPU memory",
        step_unit=config.step_unit,
    )


def resolve_ram_limit(value: int | str, share: float, workers: int) -> int:
    if value == "auto":
        # the workers on this machine share what is available now
        return int(psutil.virtual_memory().available * share / workers)
    return int(value)


def resolve_gpu_limit(value: int | str | None, share: float, workers: int) -> int | None:
    if value is None:
        return None
    if value == "auto":
        import torch

        return int(torch.cuda.get_device_properties(0).total_memory * share / workers)
    return int(value)


def trial_baseline(config: StudyConfig, cache: Path, workers: int) -> int:
    """The CPU forecast's baseline: the RSS of a real trial process as its trial starts, measured once
    per run (it depends on what the forkserver imported, the main script among them)."""
    from search.run.child import trial_baseline_bytes

    start_forkserver()  # no-op when running; else started with the trials' preload, as they would start it
    preload = [config.train_config(tokenizer_vocab=v).to_dict() for v in config.vocab_choices]
    return trial_baseline_bytes(
        {"cache_dir": str(cache), "threads": worker_threads(config.threads, workers), "preload": preload}
    )


def smallest_forecast(space: SearchSpace, device: str, baseline: int | None, estimate) -> int | None:
    """The lowest forecast peak over random points of the space at its smallest batch size."""
    rng = random.Random(0)
    batch = min(space.space.batch_size)
    best = None
    for _ in range(64):
        cand = space.draw(rng, batch_size=batch)
        if cand is not None:
            f = estimate(cand.model_config, cand.train_config, device, baseline_bytes=baseline)
            best = f if best is None else min(best, f)
    return best


def forecast_peak(model_config: ModelConfig, train_config: TrainConfig, device: str, baseline_bytes: int | None) -> int:
    """A trial's forecast peak (bytes) on its device, before anything is allocated."""
    from mfha.memory import estimate_training_peak

    return estimate_training_peak(model_config, train_config, device, baseline_bytes=baseline_bytes)


def measured_verdict(pruner: MemoryAwarePruner, device: str, ram_limit: int, rss: int, step: int | None) -> str | None:
    """The RAM limit holds for the trial process on every device (on CUDA the child enforces the GPU's)."""
    if device == "cpu":
        return pruner.measured_verdict(rss, step)
    return pruner.measured_verdict(rss, step, limit=ram_limit, name="RAM")


def trial_peak(device: str, peak_rss: int, last_eval: dict) -> int:
    """A trial's peak: on the CPU the larger of the watched RSS and the child's own figure; on CUDA the child's."""
    if device == "cpu":
        return max(peak_rss, int(last_eval.get("peak_mem_bytes", 0)))
    return int(last_eval.get("peak_mem_bytes", 0))


def watcher(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:  # it failed and exited already; its message is in the pipe
        return None


def rss(p: psutil.Process | None) -> int:
    if p is None:
        return 0
    try:
        return p.memory_info().rss
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return 0


__all__ = [
    "MIB",
    "FORECAST_ATTR",
    "fmt_bytes",
    "MemoryAwarePruner",
    "Limits",
    "resolve_limits",
    "make_pruner",
    "resolve_ram_limit",
    "resolve_gpu_limit",
    "trial_baseline",
    "smallest_forecast",
    "forecast_peak",
    "measured_verdict",
    "trial_peak",
    "watcher",
    "rss",
]
