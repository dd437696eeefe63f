"""Validation: retrain the search's best configurations with fresh seeds, so the winner is not luck.

The search trains each configuration once, with one seed; its best value is the best of many noisy
draws and so flatters its trial (the winner's curse). Validation picks the `top` best distinct
configurations, the best of every head family, the best baseline and the best of each side of the
verdict (mixed sizes, plain multi-head), and retrains each with N seeds the search never used.
Results go to the companion study `NAME.validation`, one trial per (configuration, seed), through the
same trial machinery as the search: RAM forecast and watch, heartbeat and retry, `--workers`, any
storage. A rerun enqueues only the pairs that are not done, queued or running, so a killed
validation resumes where it stopped.
"""

from __future__ import annotations

import itertools
import sys
import time
from dataclasses import dataclass, field

import optuna
from optuna.trial import FrozenTrial, TrialState

from mfha.config import ModelConfig, TrainConfig
from mfha.errors import ConfigError
from search.run.console import Bars, HeldLog, quiet_optuna
from search.run.host import share_cores
from search.run.memory import MemoryAwarePruner
from search.run.objective import Objective, set_attrs
from search.run.prepare import Prepared, check_vocab_sizes, open_run
from search.run.runner import RunSummary, check_objectives, drive, name_objective, trial_settings
from search.run.workers import SurplusTrial
from search.store.storage import open_study
from search.study.parser import parse_study
from search.study.space import Candidate
from search.study.trials import BASELINE, FINISHED, mixes_sizes, validation_key, validation_name
from search.study.types import StudyConfig, ValidationConfig


@dataclass
class Pick:
    """A search trial chosen for validation, and why (\"top 1\", \"best fractal\", ...)."""

    trial: FrozenTrial
    why: list[str] = field(default_factory=list)


def select_configs(search: optuna.Study, *, top: int, families: bool = True) -> list[Pick]:
    """The configurations to retrain: the `top` best distinct ones, (with `families`) the best of every
    head family, and always the best baseline and the best mixed-size and best plain multi-head one.

    Best is the lowest val_bpc; in a multi-objective study the `top` come from the Pareto front first
    (by val_bpc), since those are the trade-offs a user picks from."""
    if top < 1:
        raise ValueError(f"top must be a positive integer, but got {top=}.")
    done = sorted(
        (
            t
            for t in search.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if "model_config" in t.user_attrs and "reused_from" not in t.user_attrs
        ),
        key=lambda t: (t.values[0], t.number),
    )
    front = {t.number for t in search.best_trials} if len(search.directions) > 1 else set()
    distinct, keys = [], set()
    for t in done:  # the same configuration sampled twice trains once (reused_from), but be sure
        if t.user_attrs.get("config_key") not in keys:
            keys.add(t.user_attrs.get("config_key"))
            distinct.append(t)
    picks: dict[int, Pick] = {}

    def add(t: FrozenTrial | None, why: str) -> None:
        if t is not None:
            picks.setdefault(t.number, Pick(t)).why.append(why)

    # sorted() is stable: the front first, each part by val_bpc
    for i, t in enumerate(sorted(distinct, key=lambda t: t.number not in front)[:top]):
        add(t, f"top {i + 1}" + (" (Pareto front)" if t.number in front else ""))
    if families:
        for family in dict.fromkeys(t.user_attrs.get("family", "") for t in distinct):
            add(next(t for t in distinct if t.user_attrs.get("family", "") == family), f"best {family}")
    # always: the reference, and the two sides of the report's verdict
    add(next((t for t in distinct if t.user_attrs.get("role") == BASELINE), None), "best baseline")
    add(next((t for t in distinct if mixes_sizes(t.user_attrs["model_config"])), None), "best mixed sizes")
    add(next((t for t in distinct if not mixes_sizes(t.user_attrs["model_config"])), None), "best plain multi-head")
    return list(picks.values())


def validation_seeds(search: optuna.Study, n: int) -> list[int]:
    """The first `n` positive seeds that no search trial trained with."""
    used = {
        t.user_attrs["train_config"].get("seed")
        for t in search.get_trials(deepcopy=False)
        if "train_config" in t.user_attrs
    }
    return list(itertools.islice((s for s in itertools.count(1) if s not in used), n))


def stored_config(storage_url: str, name: str, *, dataset: str | None = None) -> StudyConfig:
    """The study file a search was run with, as stored in the study, with this command's storage."""
    study = open_study(storage_url, name)
    raw = study.user_attrs.get("study_file")
    if not isinstance(raw, dict):
        raise ConfigError(
            f"study {name!r} holds no study file (it was not created by run_search.py run); validate needs one."
        )
    return parse_study(raw, source=f"study {name!r}").with_overrides(storage=storage_url, dataset=dataset)


def resolve(
    config: StudyConfig, *, top: int | None, seeds: int | None, families: bool | None = None
) -> ValidationConfig:
    """Flags over the study file's [validation] over the defaults."""
    check_flags(top=top, seeds=seeds)
    base = config.validation or ValidationConfig()
    return ValidationConfig(
        base.top if top is None else top,
        base.seeds if seeds is None else seeds,
        base.families if families is None else families,
    )


MAX_SEEDS = 100  # an interval is as tight as it gets long before this; more is a typo, and a store flood


def check_flags(*, top: int | None, seeds: int | None) -> None:
    if top is not None and top < 1:
        raise ConfigError(f"--top must be a positive integer, but got {top=}.")
    if seeds is not None and seeds < 2:
        raise ConfigError(f"--seeds must be an integer >= 2 (an interval needs two seeds), but got {seeds=}.")
    if seeds is not None and seeds > MAX_SEEDS:
        raise ConfigError(
            f"--seeds must be at most {MAX_SEEDS} (the interval hardly narrows past a few dozen seeds), but got {seeds=}."
        )


Key = tuple[int, int, "str | None", "int | None"]  # (search trial, seed, variant, budget_tokens): see validation_key


class _Plan:
    """The (configuration, seed) pairs a validation request needs, keyed as `validation_key` keys
    them, and which of them no trial holds yet. Only the request's own pairs count: a queue left by
    an earlier, other request never decides what this one trains."""

    def __init__(self, search: optuna.Study, v: ValidationConfig) -> None:
        self.picks = select_configs(search, top=v.top, families=v.families)
        if not self.picks:
            raise ConfigError(
                f"study {search.study_name!r} has no COMPLETE trial to validate yet; run the search first."
            )
        self.seeds = validation_seeds(search, v.seeds)
        self.sources = {p.trial.number: p.trial for p in self.picks}
        self.needed: list[Key] = [(p.trial.number, s, None, None) for p in self.picks for s in self.seeds]

    def missing(self, study: optuna.Study, *, exclude: int | None = None) -> list[Key]:
        """Needed pairs that no trial holds (done, pruned, running or queued)."""
        held = {
            validation_key(t.user_attrs)
            for t in study.get_trials(deepcopy=False)
            if t.state != TrialState.FAIL and t._trial_id != exclude
        }
        return [key for key in self.needed if key not in held]

    def superseded(self, study: optuna.Study) -> list[FrozenTrial]:
        """Queued trials of an earlier request that this one does not need."""
        needed = set(self.needed)
        return [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            if validation_key(t.user_attrs) not in needed
        ]

    def total(self, study: optuna.Study) -> int:
        """Finished trials the study holds once every needed pair is finished (earlier runs' others count too)."""
        finished = [validation_key(t.user_attrs) for t in study.get_trials(deepcopy=False, states=FINISHED)]
        return len(finished) - len(set(finished) & set(self.needed)) + len(self.needed)


class _Retrain:
    """The validation study's `propose`: the queued (configuration, seed) of a trial as a Candidate."""

    def __init__(self, plan: _Plan, dataset: str | None) -> None:
        self.plan = plan
        self.dataset = dataset

    def __call__(self, trial: optuna.Trial) -> Candidate:
        key = validation_key(trial.user_attrs)
        if key is None or key not in self.plan.needed:
            # a trial nothing was queued for (a queued pair failed meanwhile), or one another request
            # queued after this one started: take a missing pair of this request
            missing = self.plan.missing(trial.study, exclude=trial._trial_id)
            if not missing:
                reason = "surplus: every (configuration, seed) pair of this validation is done, running or queued"
                trial.set_user_attr("fail_reason", reason)
                raise SurplusTrial(reason)
            key = missing[0]
            stale = {k: None for k in ("variant", "budget_tokens") if k in trial.user_attrs}
            set_attrs(trial, source_trial=key[0], seed=key[1], **stale)
        source, seed = key[0], key[1]
        src = self.plan.sources[source]
        a = src.user_attrs
        mc = ModelConfig.from_dict(a["model_config"])
        tc = TrainConfig.from_dict(
            {**a["train_config"], "seed": seed, **({"dataset": self.dataset} if self.dataset else {})}
        )
        attrs = {
            "heads": a["heads"],
            "family": a.get("family", ""),
            "n_params": a["n_params"],
            "source_trial": source,
            "seed": seed,
            "search_value": src.values[0],
            **({"role": a["role"]} if "role" in a else {}),
        }
        return Candidate(mc, tc, attrs)


def validation_study(
    config: StudyConfig, prep: Prepared, storage, v: ValidationConfig, *, log
) -> tuple[optuna.Study, _Plan]:
    """The companion study, created or resumed, with every missing pair enqueued."""
    search = optuna.load_study(study_name=config.name, storage=storage)
    check_vocab_sizes(search, prep)  # else the stored configurations would be rebuilt at another vocabulary
    plan = _Plan(search, v)
    pruner = MemoryAwarePruner(
        optuna.pruners.NopPruner(),
        memory_limit=prep.pruner.memory_limit,
        memory_name=prep.pruner.memory_name,
        step_unit=config.step_unit,
    )
    study = optuna.create_study(
        study_name=validation_name(config.name),
        storage=storage,
        sampler=optuna.samplers.RandomSampler(),
        pruner=pruner,
        directions=["minimize"] * len(config.objectives),
        load_if_exists=True,
    )
    check_objectives(study, config)
    name_objective(study, config.objectives)
    study.set_user_attr("source_study", config.name)
    study.set_user_attr("seeds", plan.seeds)
    study.set_user_attr("step_unit", config.step_unit)
    study.set_user_attr("selection", [{"source_trial": p.trial.number, "why": p.why} for p in plan.picks])
    missing = plan.missing(study)
    superseded = plan.superseded(study)
    if isinstance(log, HeldLog):
        log.release()  # every check has passed: the run's held lines, then the plan
    # said before anything is queued, so a request larger than meant can be stopped at once
    log(
        f"validation {study.study_name!r}: {len(plan.picks)} configurations x {len(plan.seeds)} seeds {plan.seeds} = "
        f"{len(plan.needed)} pairs; {len(plan.needed) - len(missing)} done or under way, {len(missing)} to queue"
        + (
            f"; {len(superseded)} queued by an earlier request that this one does not include are closed"
            if superseded
            else ""
        )
    )
    for t in superseded:
        # FAIL, not PRUNED: it never ran, and a FAIL holds no pair, so a request that needs it queues it again
        storage.set_trial_user_attr(t._trial_id, "fail_reason", "superseded: queued by an earlier validate request")
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    for source, seed, _variant, _tokens in missing:
        study.enqueue_trial({}, user_attrs={"source_trial": source, "seed": seed})
    return study, plan


def run_validation(
    config: StudyConfig,
    *,
    top: int | None = None,
    seeds: int | None = None,
    dataset: str | None = None,
    artifacts=None,
    progress: bool = True,
    workers: int = 1,
    threads: int | None = None,
    cache_dir=None,
    log=None,
) -> RunSummary:
    """Retrain the selected configurations with fresh seeds until every pair is finished (or interrupted)."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    v = resolve(config, top=top, seeds=seeds)
    held = HeldLog(log)  # the cores line waits until the checks have passed (see run_study)
    with quiet_optuna(), share_cores(threads, config.threads, workers, cache_dir=cache_dir, log=held) as cores:
        t_start = time.perf_counter()
        config = _with_trial_dataset(config, dataset)
        storage, prep = open_run(config, workers=workers, cache_dir=cache_dir)
        settings = trial_settings(config, prep, artifacts=artifacts, workers=workers, threads=threads)
        study, plan = validation_study(config, prep, storage, v, log=held)
        held.release()
        settings.threads = cores.threads
        total = plan.total(study)
        finished = len(study.get_trials(deepcopy=False, states=FINISHED))
        bars = Bars(study.study_name, total, finished, enabled=progress, log=log)
        objective = Objective(
            config, prep.space, prep.pruner, settings, progress=bars, propose=_Retrain(plan, dataset), reuse=False
        )
        return drive(
            study, storage, objective, bars, total=total, timeout_s=None, log=log, t_start=t_start, cores=cores
        )


def enqueue_validation(
    config: StudyConfig,
    *,
    top: int | None = None,
    seeds: int | None = None,
    dataset: str | None = None,
    workers: int = 1,
    cache_dir=None,
    log=None,
) -> None:
    """Create or resume the validation study and enqueue its missing pairs, for a supervisor whose
    workers then only take from the queue (so no two of them enqueue the same pair)."""
    from search.run.prepare import prepare
    from search.store.storage import make_storage

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    v = resolve(config, top=top, seeds=seeds)
    with quiet_optuna():
        config = _with_trial_dataset(config, dataset)
        storage = make_storage(
            config.storage, heartbeat_interval=config.heartbeat_interval_s, grace_period=config.grace_period_s
        )
        validation_study(config, prepare(config, workers=workers, cache_dir=cache_dir), storage, v, log=log)


def _with_trial_dataset(config: StudyConfig, dataset: str | None) -> StudyConfig:
    """The data the search trials trained on (a run's --dataset is not in the stored study file)."""
    if dataset is not None:
        return config.with_overrides(dataset=dataset)
    study = open_study(config.storage, config.name)
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if "train_config" in t.user_attrs:
            return config.with_overrides(dataset=t.user_attrs["train_config"]["dataset"])
    return config


__all__ = [
    "run_validation",
    "enqueue_validation",
    "check_flags",
    "select_configs",
    "validation_seeds",
    "stored_config",
    "resolve",
    "validation_study",
    "Pick",
]
