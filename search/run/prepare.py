"""Before the first trial: the data (and so the vocabulary sizes), the space checked against the
budget, the device, and the memory limits and pruner (`search.run.memory`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.storages import RDBStorage

from mfha.errors import ConfigError
from search.run.forkserver import start_forkserver
from search.run.memory import MemoryAwarePruner, make_pruner, resolve_limits
from search.store.storage import make_storage
from search.study.space import MAX_WASTED_SHARE, SearchSpace
from search.study.types import StudyConfig


@dataclass
class Prepared:
    """A study's resolved pieces: vocabulary sizes, the space, limits and the pruner."""

    config: StudyConfig
    space: SearchSpace
    vocab_sizes: dict
    device: str
    ram_limit: int
    gpu_limit: int | None
    baseline_bytes: int | None
    pruner: MemoryAwarePruner
    cache_dir: Path
    notes: list[str] = field(default_factory=list)  # what the run should say before its first trial


def prepare(config: StudyConfig, *, workers: int = 1, cache_dir: str | Path | None = None) -> Prepared:
    """Everything a run needs before its first trial; each user mistake is one ConfigError line."""
    from mfha.data import default_cache_dir, load_data

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    vocab_sizes = {}
    for v in config.vocab_choices:
        # one load per vocabulary fills the cache every trial reads from in milliseconds
        vocab_sizes[v] = load_data(config.train_config(tokenizer_vocab=v), cache_dir=cache).tokenizer.vocab_size
        if v is not None and vocab_sizes[v] < v // 2:
            raise ConfigError(
                f"data.tokenizer_vocab={v} is more than the training slice supports (the tokenizer stopped at "
                f"{vocab_sizes[v]} tokens); lower data.tokenizer_vocab or raise data.max_train_stories, but got data.tokenizer_vocab={v}."
            )
    space = SearchSpace(config, vocab_sizes)
    space.check_budget()
    share, example = space.infeasible_share()
    if share > MAX_WASTED_SHARE:
        raise ConfigError(
            f"{share:.0%} of the space cannot meet budget.params={config.budget_params:,} ± {config.budget_tolerance:.0%} "
            f"(at most {MAX_WASTED_SHARE:.0%} may be wasted), e.g. {example}; widen budget.tolerance or space.width/space.depth, "
            f"or drop the head choices that do not fit."
        )
    device = resolve_device(config.train_config().device)
    limits = resolve_limits(config, space, device, workers=workers, cache=cache)
    pruner = make_pruner(config, device, limits)
    notes = [n for n in (time_note(config, space, device),) if n]
    return Prepared(config, space, vocab_sizes, device, limits.ram, limits.gpu, limits.baseline, pruner, cache, notes)


# a generous upper bound of training speed (tokens/s) for the models this tool trains, per device: a
# budget that takes longer than a day even at this speed is then timed for real before it is said
FAST_TOKENS_PER_S = {"cpu": 200_000, "cuda": 20_000_000}
DAY_S = 86_400


def time_note(config: StudyConfig, space: SearchSpace, device: str) -> str | None:
    """A line when a trial's token budget would take longer than study.timeout_s or a day; timed on a
    model drawn from the space, in this process, only when a generous speed bound says it might."""
    tokens = config.tokens
    limit = min(config.timeout_s or DAY_S, DAY_S)
    if tokens is None or tokens / FAST_TOKENS_PER_S[device] <= limit:
        return None
    from mfha.cost import measure_cost

    cand = space.draw(random.Random(0))
    if cand is None:
        return None
    speed = measure_cost(cand.model_config, cand.train_config, "train", seconds=0.5, min_rounds=1).model_tokens_per_s
    seconds = tokens / speed
    if seconds <= limit:
        return None
    what = f"study.timeout_s={config.timeout_s:g} s" if config.timeout_s and config.timeout_s < DAY_S else "a day"
    return (
        f"warning: training.tokens={tokens:,} per trial takes about {_duration(seconds)} at {speed:,.0f} tokens/s "
        f"(a {cand.attrs['n_params']:,}-parameter model of the space, timed here), longer than {what}; "
        f"lower training.tokens unless that is meant."
    )


def _duration(seconds: float) -> str:
    for unit, size in (("days", DAY_S), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:,.1f} {unit}"
    return f"{seconds:.0f} s"


def open_run(config: StudyConfig, *, workers: int, cache_dir) -> tuple[RDBStorage, Prepared]:
    """The storage (a bad URL or an unwritable folder is reported before the forkserver starts), then
    the forkserver, whose imports overlap the data and baseline work of `prepare`."""
    storage = make_storage(
        config.storage, heartbeat_interval=config.heartbeat_interval_s, grace_period=config.grace_period_s
    )
    start_forkserver()
    return storage, prepare(config, workers=workers, cache_dir=cache_dir)


def check_vocab_sizes(study: optuna.Study, prep: Prepared) -> dict[str, int]:
    """The vocabulary sizes of this run, which must be the ones the study was searched with: widths were
    solved for them, and a run on other data or another tokenizer version would build other models."""
    now = {("char" if k is None else str(k)): v for k, v in prep.vocab_sizes.items()}
    stored = study.user_attrs.get("vocab_sizes")
    if stored is not None and any(stored.get(k, v) != v for k, v in now.items()):
        raise ConfigError(
            f"study {study.study_name!r} was searched with vocabulary sizes {stored}, but this data and tokenizer give {now} "
            f"(another --dataset slice, or a tokenizer change); rerun on the same data, or pick a new study.name."
        )
    return {**(stored or {}), **now}


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            'training.device is \'cuda\' but no CUDA device is available; set training.device = "cpu" or "auto".'
        )
    return device


__all__ = ["Prepared", "prepare", "open_run", "check_vocab_sizes", "resolve_device", "time_note"]
