"""Running a study: data and limits resolved once, the study created or resumed, trials until the
study holds `n_trials` finished trials (COMPLETE + PRUNED), a progress bar, clean interrupts.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import sys
import time
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import optuna
import psutil
from optuna.trial import FrozenTrial, TrialState

from mfha.errors import ConfigError, MFHAError
from optuna.storages import RDBStorage

from search._dashboard import artifact_store, save_study_note, study_note
from search._evidence import BASELINE, objective_names, ranked
from search._host import CoreShare, share_cores
from search._objective import Objective, TrialFailed, TrialSettings
from search._pruners import MemoryAwarePruner, fmt_bytes, make_loss_pruner
from search._space import MAX_WASTED_SHARE, SearchSpace
from search._storage import default_artifacts_dir, make_storage, mask_url, sqlite_path
from search._study_file import StudyConfig
from search._workers import SurplusTrial, TrialSlots, worker_threads

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
MAX_FAILS_IN_A_ROW = 5
# what an interrupted trial's retry keeps besides its params: a baseline stays one, a validation
# trial keeps the configuration and seed it retrains
QUEUE_ATTRS = ("role", "source_trial", "seed")


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised where SIGINT would raise KeyboardInterrupt, so both end a trial the same way."""


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


def prepare(config: StudyConfig, *, workers: int = 1, cache_dir: str | Path | None = None) -> Prepared:
    """Everything a run needs before its first trial; each user mistake is one ConfigError line."""
    from mfha.data import default_cache_dir, load_data
    from mfha.memory import estimate_training_peak

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
    device = _resolve_device(config.train_config().device)
    p = config.pruning
    ram_limit = _resolve_ram_limit(p.ram_limit, p.ram_auto_share, workers)
    gpu_limit = _resolve_gpu_limit(p.gpu_memory_limit, p.ram_auto_share, workers) if device == "cuda" else None
    baseline = _trial_baseline(config, cache, workers) if device == "cpu" else None
    memory_limit = ram_limit if device == "cpu" else gpu_limit
    if memory_limit is not None:
        smallest = _smallest_forecast(space, device, baseline, estimate_training_peak)
        if smallest is not None and smallest > memory_limit:
            key = "pruning.ram_limit" if device == "cpu" else "pruning.gpu_memory_limit"
            raise ConfigError(
                f"{key}={fmt_bytes(memory_limit)} is below the smallest model in the space (forecast "
                f"{fmt_bytes(smallest)}{', framework ' + fmt_bytes(baseline) if baseline else ''}); raise {key} or shrink the space/batch."
            )
    pruner = MemoryAwarePruner(
        make_loss_pruner(p, max_steps=config.max_resource, eval_interval=config.eval_every),
        memory_limit=memory_limit,
        kind=p.pruner,
        memory_name="RAM" if device == "cpu" else "GPU memory",
        step_unit=config.step_unit,
    )
    return Prepared(config, space, vocab_sizes, device, ram_limit, gpu_limit, baseline, pruner, cache)


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
    # first, so the run's first line says how many threads it got and why
    with _quiet_optuna(), share_cores(threads, config.threads, workers, cache_dir=cache_dir, log=log) as cores:
        return _run_study(
            config,
            artifacts=artifacts,
            progress=progress,
            workers=workers,
            threads=threads,
            cache_dir=cache_dir,
            log=log,
            cores=cores,
        )


def _run_study(
    config: StudyConfig, *, artifacts, progress, workers, threads, cache_dir, log, cores: CoreShare
) -> RunSummary:
    t_start = time.perf_counter()
    storage, prep = open_run(config, workers=workers, cache_dir=cache_dir)
    t_prepared = time.perf_counter()
    # a server database is there to be shared: assume other workers (other machines) on the study
    parallel = workers > 1 or sqlite_path(config.storage) is None
    study = search_study(config, prep, storage, parallel=parallel, log=log)
    settings = trial_settings(config, prep, artifacts=artifacts, workers=workers, threads=threads)
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
    bars = _Bars(config.name, total, finished, enabled=progress, log=log)
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


def open_run(config: StudyConfig, *, workers: int, cache_dir) -> tuple[RDBStorage, Prepared]:
    """The storage (a bad URL or an unwritable folder is reported before the forkserver starts), then
    the forkserver, whose imports overlap the data and baseline work of `prepare`."""
    from search._objective import start_forkserver

    storage = make_storage(
        config.storage, heartbeat_interval=config.heartbeat_interval_s, grace_period=config.grace_period_s
    )
    start_forkserver()
    return storage, prepare(config, workers=workers, cache_dir=cache_dir)


def search_study(config: StudyConfig, prep: Prepared, storage: RDBStorage, *, parallel: bool, log) -> optuna.Study:
    """The search study, created or resumed, with the study file and note stored; a new one gets its baselines."""
    with _quiet_optuna():
        study = optuna.create_study(
            study_name=config.name,
            storage=storage,
            sampler=prep.space.make_sampler(parallel=parallel),
            pruner=prep.pruner,
            directions=["minimize"] * len(config.objectives),
            load_if_exists=True,
        )
    check_objectives(study, config)
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
    bars: _Bars,
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
    stop = _Interrupts()
    slots = TrialSlots(total, deadline=deadline, log=log, check=stop.check) if total is not None else None
    objective.check_interrupt = stop.check
    # which machine and process ran a trial, for the dashboard; written with the trial's other attrs
    objective.extra_attrs = {"worker": f"{socket.gethostname()}:{os.getpid()}", "threads": objective.settings.threads}

    def run_trial(trial: optuna.Trial) -> float:
        objective.current_trial_id, objective.current_trial_number = trial._trial_id, trial.number
        stop.check()
        if slots is not None:
            slots.claim(trial)
        if cores is not None:  # this trial's share of the host's cores (other runs come and go)
            objective.settings.threads = objective.extra_attrs["threads"] = cores.refresh()
        return objective(trial)

    callbacks = [bars.after_trial, fails] + ([slots.after_trial] if slots is not None else [])
    timings = dict(timings or {})
    t_loop = time.perf_counter()
    with stop:  # signals during the closing writes below are noted, never raised
        try:
            if cores is not None:
                cores.wait(stop.check)  # for a core that a multi-threaded run gives back (search/_host.py)
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
    best = _best(study)
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
    best = _best(study)
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


def _best(study: optuna.Study) -> FrozenTrial | None:
    """The COMPLETE trial with the lowest val_bpc (the first objective of a multi-objective study)."""
    return next(iter(ranked(study)), None)


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


def objective_text(study: optuna.Study, trial: FrozenTrial) -> str:
    """A COMPLETE trial's values by name: "val_bpc 1.2345" or "val_bpc 1.2345, train_cost 0.871"."""
    names = objective_names(study)
    return ", ".join(f"{n} {v:.4f}" if i == 0 else f"{n} {v:.3f}" for i, (n, v) in enumerate(zip(names, trial.values)))


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


class _Bars:
    """A bar over trials and one over the running trial's steps; a line per finished trial."""

    def __init__(self, name: str, total: int | None, initial: int, *, enabled: bool, log) -> None:
        self.enabled = enabled
        self.log = log
        self.trials = self.steps = None
        if enabled:
            from tqdm import tqdm

            self.trials = tqdm(
                total=total, initial=initial, desc=name, unit="trial", position=0, dynamic_ncols=True, file=sys.stderr
            )
            self.steps = tqdm(
                total=1, desc="trial", unit="step", position=1, leave=False, dynamic_ncols=True, file=sys.stderr
            )

    def trial_started(self, number: int, steps: int, label: str) -> None:
        if self.steps is not None:
            self.steps.reset(total=steps)
            self.steps.set_description(f"trial {number}: {label}")

    def trial_eval(self, step: int, metrics: dict) -> None:
        if self.steps is not None:
            self.steps.update(step - self.steps.n)
            self.steps.set_postfix(val_bpc=f"{metrics['val_bpc']:.3f}", tok_s=f"{metrics['tokens_per_s']:.0f}")

    def after_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        a = trial.user_attrs
        what = (
            objective_text(study, trial)
            if trial.state == TrialState.COMPLETE
            else a.get("prune_reason") or a.get("fail_reason", "")
        )
        desc = f"{a['heads']} ({a['n_params']:,} params)" if "heads" in a else ""
        if "source_trial" in a:
            desc += f", trial {a['source_trial']} seed {a['seed']}"
        secs = trial.duration.total_seconds() if trial.duration else 0.0
        line = f"trial {trial.number} {trial.state.name.lower()} in {secs:.1f} s: {desc} {what}".replace("  ", " ")
        if self.trials is not None:
            self.trials.write(line, file=sys.stderr)
            if trial.state in FINISHED:
                self.trials.update(1)
            best = _best(study)
            if best is not None:
                self.trials.set_postfix(best=f"{best.values[0]:.4f}")
        else:
            self.log(line)

    def close(self) -> None:
        for bar in (self.steps, self.trials):
            if bar is not None:
                bar.close()


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Our own line per trial replaces Optuna's (which would repeat a FAIL's traceback)."""
    old = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(old)


class _Interrupts:
    """SIGINT and SIGTERM, raised (as KeyboardInterrupt / Interrupted) only where nothing is half-written.

    A Python signal handler runs at whatever line the main thread is on. A handler that raised there
    could land inside Optuna's bookkeeping: while it recorded a finished trial, `_run_trial` then
    failed with UnboundLocalError ('updated_state') on top of the interrupt (the CI flake of the
    `--workers` SIGTERM test); while it created a trial, that trial stayed RUNNING. So the handler
    only notes the signal, and `check()` raises it once, where this run's own code waits: the
    training loop, the slot waits, the start of a trial, the end of the loop. Signals that come while
    the interrupted trial is closed (a second Ctrl-C, the kernel's SIGTERM when a supervisor dies)
    are noted and ignored, so the closing writes finish.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.raised = False
        self._old: dict = {}

    def note(self, signum: int, frame) -> None:
        self.signum = self.signum or signum

    def check(self) -> None:
        if self.signum is not None and not self.raised:
            self.raised = True
            raise KeyboardInterrupt() if self.signum == signal.SIGINT else Interrupted()

    def __enter__(self) -> "_Interrupts":
        try:
            self._old = {s: signal.signal(s, self.note) for s in self.SIGNALS}
        except ValueError:  # not the main thread: signals stay as they are, check() never raises
            self._old = {}
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            'training.device is \'cuda\' but no CUDA device is available; set training.device = "cpu" or "auto".'
        )
    return device


def _resolve_ram_limit(value: int | str, share: float, workers: int) -> int:
    if value == "auto":
        # the workers on this machine share what is available now
        return int(psutil.virtual_memory().available * share / workers)
    return int(value)


def _resolve_gpu_limit(value: int | str | None, share: float, workers: int) -> int | None:
    if value is None:
        return None
    if value == "auto":
        import torch

        return int(torch.cuda.get_device_properties(0).total_memory * share / workers)
    return int(value)


def _trial_baseline(config: StudyConfig, cache: Path, workers: int) -> int:
    """The CPU forecast's baseline: the RSS of a real trial process as its trial starts, measured once
    per run (it depends on what the forkserver imported, the main script among them)."""
    from search._child import trial_baseline_bytes
    from search._objective import start_forkserver

    start_forkserver()  # no-op when running; else started with the trials' preload, as they would start it
    preload = [config.train_config(tokenizer_vocab=v).to_dict() for v in config.vocab_choices]
    return trial_baseline_bytes(
        {"cache_dir": str(cache), "threads": worker_threads(config.threads, workers), "preload": preload}
    )


def _smallest_forecast(space: SearchSpace, device: str, baseline: int | None, estimate) -> int | None:
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


__all__ = [
    "run_study",
    "prepare",
    "check_vocab_sizes",
    "check_objectives",
    "objective_text",
    "count_trials",
    "summarize",
    "open_run",
    "search_study",
    "trial_settings",
    "drive",
    "RunSummary",
    "Prepared",
    "Interrupted",
]
