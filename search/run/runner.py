"""Running a study: data and limits resolved once, the study created or resumed, trials until the
study holds `n_trials` finished trials (COMPLETE + PRUNED), a progress bar, clean interrupts.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from mfha.errors import ConfigError, MFHAError
from search.run.artifacts import save_study_note, study_note
from search.run.console import Bars, HeldLog, Interrupts, quiet_optuna
from search.run.host import CoreShare, share_cores
from search.run.memory import fmt_bytes
from search.run.objective import Objective, TrialFailed, TrialSettings
from search.run.prepare import Prepared, check_vocab_sizes, open_run
from search.run.workers import SurplusTrial, TrialSlots, worker_threads
from search.store.storage import (
    artifact_store,
    default_artifacts_dir,
    make_storage,
    mask_url,
    sqlite_path,
    storage_flag,
)
from search.study.identity import first_difference, other_changes, trial_definition
from search.study.parser import parse_study
from search.study.trials import BASELINE, FINISHED, best_trial
from search.study.types import StudyConfig

MAX_FAILS_IN_A_ROW = 5
# what an interrupted trial's retry keeps besides its params: a baseline stays one, a validation
# trial keeps the configuration and seed it retrains
QUEUE_ATTRS = ("role", "source_trial", "seed", "variant", "budget_tokens")


@dataclass
class RunSummary:
    study_name: str
    storage: str  # masked
    counts: dict[str, int]
    best_value: float | None
    best_number: int | None
    wall_s: float
    new_trials: int
    interrupted: bool = False
    overhead_s: float = 0.0  # time outside the children's training, summed over this run's trials
    train_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    pareto: int | None = None  # trials on the Pareto front of a multi-objective study

    def line(self) -> str:
        counts = ", ".join(f"{n} {s.lower()}" for s, n in self.counts.items() if n)
        best = (
            f"best val_bpc {self.best_value:.4f} (trial {self.best_number})"
            if self.best_value is not None
            else "no complete trial yet"
        )
        if self.pareto is not None:
            best += f"; {self.pareto} trials on the Pareto front"
        return f"study {self.study_name!r}: {counts}; {best}; {self.new_trials} new trials in {self.wall_s:.0f} s"


def run_study(
    config: StudyConfig,
    *,
    artifacts: str | Path | None = None,
    progress: bool = True,
    workers: int = 1,
    threads: int | None = None,
    cache_dir: str | Path | None = None,
    log=None,
) -> RunSummary:
    """Run (or resume) the study until it holds config.n_trials finished trials or config.timeout_s passes."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    # cores first (the run's first line says how many threads it got and why), but that line is held
    # until the checks have passed, so a mistake they find is the one line the user sees
    held = HeldLog(log)
    with quiet_optuna(), share_cores(threads, config.threads, workers, cache_dir=cache_dir, log=held) as cores:
        return _run_study(
            config,
            artifacts=artifacts,
            progress=progress,
            workers=workers,
            threads=threads,
            cache_dir=cache_dir,
            log=log,
            held=held,
            cores=cores,
        )


def _run_study(
    config: StudyConfig, *, artifacts, progress, workers, threads, cache_dir, log, held: HeldLog, cores: CoreShare
) -> RunSummary:
    t_start = time.perf_counter()
    with removed_if_failed(config.storage):
        storage, prep = open_run(config, workers=workers, cache_dir=cache_dir)
        t_prepared = time.perf_counter()
        settings = trial_settings(config, prep, artifacts=artifacts, workers=workers, threads=threads)
        # a server database is there to be shared: assume other workers (other machines) on the study
        parallel = workers > 1 or sqlite_path(config.storage) is None
        study = search_study(config, prep, storage, parallel=parallel, log=held)
    held.release()
    for note in prep.notes:
        log(note)
    settings.threads = cores.threads
    finished = len(study.get_trials(deepcopy=False, states=FINISHED))
    total = config.n_trials
    log(
        f"study {config.name!r} in {mask_url(config.storage)}: {finished} finished trials"
        + (f" of {total}" if total else "")
        + f"; device {prep.device}, {prep.pruner.memory_name} limit "
        f"{fmt_bytes(prep.pruner.memory_limit) if prep.pruner.memory_limit else 'none'}, budget {config.band[0]:,}..{config.band[1]:,} params, "
        + (
            f"{config.tokens:,} tokens per trial"
            if config.tokens
            else f"{config.train_config().max_steps:,} steps per trial"
        )
    )
    bars = Bars(config.name, total, finished, enabled=progress, log=log)
    objective = Objective(config, prep.space, prep.pruner, settings, progress=bars)
    return drive(
        study,
        storage,
        objective,
        bars,
        total=total,
        timeout_s=config.timeout_s,
        log=log,
        t_start=t_start,
        timings={"prepare_s": t_prepared - t_start},
        cores=cores,
    )


@contextmanager
def removed_if_failed(storage_url: str) -> Iterator[None]:
    """A SQLite file that this run creates is removed again when the run stops with an error before
    its study is ready, so a mistake leaves no empty store behind."""
    db = sqlite_path(storage_url)
    new = db is not None and not db.exists()
    try:
        yield
    except MFHAError:
        if new and db is not None:
            for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
                path.unlink(missing_ok=True)
        raise


def search_study(config: StudyConfig, prep: Prepared, storage: RDBStorage, *, parallel: bool, log) -> optuna.Study:
    """The search study, created or resumed, with the study file and note stored; a new one gets its baselines."""
    with quiet_optuna():
        study = optuna.create_study(
            study_name=config.name,
            storage=storage,
            sampler=prep.space.make_sampler(parallel=parallel),
            pruner=prep.pruner,
            directions=["minimize"] * len(config.objectives),
            load_if_exists=True,
        )
    check_objectives(study, config)
    check_same_study(study, config, device=prep.device, log=log)
    name_objective(study, config.objectives)
    fresh = not study.get_trials(deepcopy=False)
    study.set_user_attr("study_file", _masked_raw(config))
    study.set_user_attr("full_training", config.full_training)
    study.set_user_attr("vocab_sizes", check_vocab_sizes(study, prep))
    study.set_user_attr("step_unit", config.step_unit)
    if config.source.endswith(".toml"):
        study.set_user_attr("study_path", config.source)  # for the report's reproduce commands
    save_study_note(
        study,
        study_note(
            config,
            vocab_sizes=prep.vocab_sizes,
            memory_limit=prep.pruner.memory_limit,
            memory_name=prep.pruner.memory_name,
            storage_url=config.storage,
        ),
    )
    if fresh:
        # first in the queue, so every study holds the plain multi-head answer at its budget
        baselines = prep.space.baselines()
        for params in baselines:
            study.enqueue_trial(params, user_attrs={"role": BASELINE})
        if baselines:
            log(f"baselines: {len(baselines)} plain multi-head configurations enqueued first (role = baseline)")
        elif config.baselines.enabled:
            log(
                "baselines: none (the space has no uniform heads; list some in [baselines] params or add 'uniform' to space.families)"
            )
    return study


def check_objectives(study: optuna.Study, config: StudyConfig) -> None:
    """A resumed study must minimize what the study file says (its stored trials hold those values)."""
    n = len(study.directions)
    held = study.metric_names
    if held is None:
        # just created (named next), or a study from before objectives were named, which minimized val_bpc alone
        fresh = n == len(config.objectives) and not study.get_trials(deepcopy=False)
        held = list(config.objectives) if fresh else ["val_bpc"] if n == 1 else [f"objective {i}" for i in range(n)]
    if any(d != optuna.study.StudyDirection.MINIMIZE for d in study.directions) or list(held) != list(
        config.objectives
    ):
        raise ConfigError(
            f"study {study.study_name!r} in {mask_url(config.storage)} minimizes {held}, but study.objectives is "
            f"{list(config.objectives)}; pick another study.name, or run it with the study file it was made with."
        )


def check_same_study(study: optuna.Study, config: StudyConfig, *, device: str, log: Callable[[str], None]) -> None:
    """A resumed study runs with the trial definition that made it (search/study/identity.py); other
    changes to the study file are accepted and said in one line. Stores the definition on the study."""
    now = trial_definition(config, device=device)
    stored = study.user_attrs.get("trial_definition")
    raw = study.user_attrs.get("study_file")
    if stored is None and isinstance(raw, dict):
        # made before the definition was stored: what its study file says (its --dataset and --device are unknown)
        stored = trial_definition(parse_study(raw, source=f"study {study.study_name!r}"), device=None)
        stored.pop("data.dataset", None)
        stored.pop("training.device", None)
        now_known = {k: v for k, v in now.items() if k not in ("data.dataset", "training.device")}
        diff = first_difference(stored, now_known)
    else:
        diff = first_difference(stored, now) if stored is not None else None
    if diff is not None:
        key, old, new = diff
        flag = {"data.dataset": " (--dataset)", "training.device": " (--device)"}.get(key, "")
        raise ConfigError(
            f"study {study.study_name!r} in {mask_url(config.storage)} was made with {_setting(key, old)}, but this run "
            f"has {_setting(key, new)}{flag}, which changes what a trial is; give this study file a new study.name, or "
            f"rerun with the file the study was made with (python run_search.py show --study {study.study_name}"
            f"{storage_flag(config.storage)} --study-file prints it)."
        )
    if isinstance(raw, dict):
        changed = other_changes(raw, _masked_raw(config))
        if changed:
            log(
                f"study file changed since the study was made: {', '.join(changed)}; accepted, as none of these "
                f"changes what a trial is (the stored copy is updated)"
            )
    study.set_user_attr("trial_definition", now)


def _setting(key: str, value: object) -> str:
    return f"{key} unset" if value is None else f"{key}={value!r}"


def name_objective(study: optuna.Study, names: tuple[str, ...] | list[str] = ("val_bpc",)) -> None:
    """The dashboard labels the objectives (`val_bpc`, `train_cost`) instead of "Objective 0", "Objective 1"."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(names))


def trial_settings(
    config: StudyConfig, prep: Prepared, *, artifacts, workers: int, threads: int | None
) -> TrialSettings:
    folder = Path(artifacts) if artifacts is not None else default_artifacts_dir(config.storage)
    store = artifact_store(folder)
    scratch = folder.parent / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    return TrialSettings(
        cache_dir=prep.cache_dir,
        threads=worker_threads(threads or config.threads, workers),
        device=prep.device,
        ram_limit=prep.ram_limit,
        gpu_limit=prep.gpu_limit,
        baseline_bytes=prep.baseline_bytes,
        artifacts=store,
        scratch=scratch,
        watch_interval_s=config.pruning.watch_interval_s,
    )


def drive(
    study: optuna.Study,
    storage: RDBStorage,
    objective: Objective,
    bars: Bars,
    *,
    total: int | None,
    timeout_s: float | None,
    log,
    t_start: float,
    timings: dict[str, float] | None = None,
    cores: CoreShare | None = None,
) -> RunSummary:
    """Trials until the study holds `total` finished trials (or `timeout_s` passes), closing cleanly on a signal."""
    fails = _FailGuard()
    started_before = _started(study)
    interrupted = False
    deadline = time.monotonic() + timeout_s if timeout_s else None
    stop = Interrupts()
    slots = TrialSlots(total, deadline=deadline, log=log, check=stop.check) if total is not None else None
    objective.check_interrupt = stop.check
    # which machine and process ran a trial, for the dashboard; written with the trial's other attrs
    objective.extra_attrs = {"worker": f"{socket.gethostname()}:{os.getpid()}", "threads": objective.settings.threads}

    def run_trial(trial: optuna.Trial) -> float | list[float]:
        objective.current_trial_id, objective.current_trial_number = trial._trial_id, trial.number
        stop.check()
        if slots is not None:
            slots.claim(trial)
        if cores is not None:  # this trial's share of the host's cores (other runs come and go)
            objective.settings.threads = objective.extra_attrs["threads"] = cores.refresh()
        return objective(trial)

    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] = [bars.after_trial, fails]
    if slots is not None:
        callbacks.append(slots.after_trial)
    timings = dict(timings or {})
    t_loop = time.perf_counter()
    with stop:  # signals during the closing writes below are noted, never raised
        try:
            if cores is not None:
                cores.wait(stop.check)  # for a core that a multi-threaded run gives back (search/run/host.py)
            if slots is None or slots.wait_for_slot(study):
                study.optimize(run_trial, timeout=timeout_s, catch=(TrialFailed, SurplusTrial), callbacks=callbacks)
            stop.check()  # a signal that came while Optuna recorded the last trial
        except KeyboardInterrupt:
            interrupted = True
            _close_interrupted(study, storage, objective)
        finally:
            bars.close()
            timings["optimize_s"] = time.perf_counter() - t_loop
            objective.close()
    if fails.message is not None and not interrupted:
        raise MFHAError(fails.message)
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name for t in trials)
    best = best_trial(study)
    return RunSummary(
        study.study_name,
        mask_url(storage.url),
        {s.name: counts.get(s.name, 0) for s in TrialState},
        best.values[0] if best else None,
        best.number if best else None,
        time.perf_counter() - t_start,
        _started(study) - started_before,
        interrupted,
        objective.overhead_s,
        objective.train_s,
        timings,
        _pareto(study),
    )


def _started(study: optuna.Study) -> int:
    """Trials that ran or run (queued ones, WAITING, are not started yet)."""
    return sum(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False))


def count_trials(storage_url: str, name: str) -> int:
    """Trials started so far (0 for a study not created yet)."""
    storage = make_storage(storage_url, heartbeat_interval=None)
    try:
        return _started(optuna.load_study(study_name=name, storage=storage))
    except KeyError:
        return 0


def summarize(storage_url: str, name: str, *, before: int = 0, wall_s: float = 0.0) -> RunSummary:
    """The run's summary line from the store, for a supervisor whose workers ran the trials."""
    study = optuna.load_study(study_name=name, storage=make_storage(storage_url, heartbeat_interval=None))
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name for t in trials)
    best = best_trial(study)
    return RunSummary(
        name,
        mask_url(storage_url),
        {s.name: counts.get(s.name, 0) for s in TrialState},
        best.values[0] if best else None,
        best.number if best else None,
        wall_s,
        _started(study) - before,
        pareto=_pareto(study),
    )


def _masked_raw(config: StudyConfig) -> dict:
    """The study file as parsed, its storage URL without a password (the dashboard shows it)."""
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in config.raw.items()}
    if "storage" in raw.get("study", {}):
        raw["study"]["storage"] = mask_url(raw["study"]["storage"])
    return raw


def _pareto(study: optuna.Study) -> int | None:
    """How many trials are on the Pareto front of a multi-objective study; None for one objective."""
    return len(study.best_trials) if len(study.directions) > 1 else None


def _close_interrupted(study: optuna.Study, storage, objective: Objective) -> None:
    """No trial of ours stays RUNNING, and the interrupted configuration is tried first next time."""
    tid = objective.current_trial_id
    if tid is None:
        return
    trial = storage.get_trial(tid)
    if trial.state == TrialState.RUNNING:  # Optuna never recorded it
        storage.set_trial_user_attr(tid, "fail_reason", "interrupted")
        storage.set_trial_state_values(tid, TrialState.FAIL)
        trial = storage.get_trial(tid)
    # no reason: stopped before its training started (Optuna closed it; a finished trial takes no attrs)
    if trial.state != TrialState.FAIL or trial.user_attrs.get("fail_reason", "interrupted") != "interrupted":
        return  # the signal came after the trial ended (complete, pruned, or failed for its own reason)
    carried = {k: trial.user_attrs[k] for k in QUEUE_ATTRS if k in trial.user_attrs}
    # a queued trial stopped before it suggested anything holds its params only as fixed_params
    params = {**trial.system_attrs.get("fixed_params", {}), **trial.params}
    if params or carried:
        study.enqueue_trial(params, user_attrs={**carried, "retry_of": trial.number})


class _FailGuard:
    """Stops the study after MAX_FAILS_IN_A_ROW failed trials: the same error would repeat forever."""

    def __init__(self) -> None:
        self.in_a_row = 0
        self.message: str | None = None

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state != TrialState.FAIL:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        if self.in_a_row >= MAX_FAILS_IN_A_ROW:
            self.message = (
                f"{self.in_a_row} trials in a row failed, the last one because: "
                f"{trial.user_attrs.get('fail_reason', 'unknown')}; fix that and rerun to resume."
            )
            study.stop()


__all__ = [
    "run_study",
    "search_study",
    "check_objectives",
    "check_same_study",
    "removed_if_failed",
    "name_objective",
    "trial_settings",
    "drive",
    "count_trials",
    "summarize",
    "RunSummary",
    "QUEUE_ATTRS",
    "MAX_FAILS_IN_A_ROW",
]
