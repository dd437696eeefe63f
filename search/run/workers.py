"""Several workers on one study: trial slots that add up to exactly `n_trials`, and `--workers N`.

Workers share nothing but the storage. Optuna's own stop (`MaxTrialsCallback`) counts finished
trials after each trial, so N workers overshoot by up to N - 1. Here a worker starts a trial only
while `finished + running < n_trials`, and a started trial trains only if fewer than `n_trials`
trials are finished or ranked ahead of it (retries of a dead worker's trial first, then by number).
The rank is a total order, so concurrent workers agree without a lock, and a trial that lost the
race waits for the trials ahead of it: it trains if one of them fails, and closes as FAIL with
reason `surplus` if they fill the study. A dead worker's RUNNING trial stops holding a slot once
its heartbeat is older than the grace period: whoever waits fails it and queues its retry.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from mfha.errors import ConfigError, MFHAError
from search.run.host import host_cores, wanted
from search.study.trials import FINISHED

POLL_S = 1.0
SURPLUS = "surplus"


def is_queued(t: FrozenTrial) -> bool:
    """A retry of a dead worker's trial or an enqueued one (an interrupted trial's params)."""
    return "failed_trial" in t.system_attrs or "fixed_params" in t.system_attrs


def _rank(t: FrozenTrial) -> tuple[int, int]:
    return (0 if is_queued(t) else 1, t.number)


class TrialSlots:
    """Keeps a study's finished trials at exactly `total` however many workers share it."""

    def __init__(
        self,
        total: int,
        *,
        deadline: float | None = None,
        poll_s: float = POLL_S,
        log: Callable[[str], None] | None = None,
        check: Callable[[], None] | None = None,
    ) -> None:
        if total < 1:
            raise ValueError(f"total must be a positive integer, but got {total=}.")
        self.total = total
        self.deadline = deadline  # time.monotonic() after which nobody waits any more
        self.poll_s = poll_s
        self.log = log or (lambda msg: None)
        self.check = check or (lambda: None)  # raises a pending Ctrl-C / SIGTERM between polls
        self.surplus = 0

    def wait_for_slot(self, study: optuna.Study) -> bool:
        """Before asking for a trial: True when one may start, False when the study is full (or time is up)."""
        told = False
        while True:
            self.check()
            _fail_stale(study)
            trials = study.get_trials(deepcopy=False)
            finished = sum(t.state in FINISHED for t in trials)
            if finished >= self.total or self._past_deadline():
                return False
            running = sum(t.state == TrialState.RUNNING for t in trials)
            if any(t.state == TrialState.WAITING for t in trials) or finished + running < self.total:
                return True
            if not told:
                self.log(
                    f"waiting: the last {self.total - finished} of {self.total} trials are running in other workers; "
                    f"a dead worker's trial is failed and retried once its heartbeat is stale"
                )
                told = True
            time.sleep(self.poll_s)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Optuna callback: stop this worker's loop once no slot is left for it."""
        if not self.wait_for_slot(study):
            study.stop()

    def claim(self, trial: optuna.Trial) -> None:
        """Inside the trial, before anything is suggested: train, or close as FAIL `surplus`."""
        study = trial.study
        while True:
            self.check()
            _fail_stale(study)
            trials = study.get_trials(deepcopy=False)
            me = next(t for t in trials if t._trial_id == trial._trial_id)
            finished = sum(t.state in FINISHED for t in trials)
            ahead = finished + sum(
                t.state == TrialState.RUNNING and t._trial_id != me._trial_id and _rank(t) < _rank(me) for t in trials
            )
            if ahead < self.total:
                return
            if finished >= self.total or self._past_deadline():
                self.surplus += 1
                reason = f"{SURPLUS}: the study already holds its {self.total} finished trials (another worker took the last slot)"
                trial.set_user_attr("fail_reason", reason)
                raise SurplusTrial(reason)  # after it, `after_trial` finds the study full and stops the loop
            time.sleep(self.poll_s)

    def _past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline


class SurplusTrial(MFHAError):
    """A trial started after the study was full; it closes as FAIL without training."""


def _fail_stale(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def worker_threads(requested: int | None, workers: int) -> int:
    """Torch threads per trial: the cores shared by the workers, never more.

    Oversubscribed OpenMP threads busy-wait on each other: 2 threads per process with other
    processes busy on a 2-core machine made a training step 3-10x slower than 1 thread.
    """
    return wanted(requested, None, workers, host_cores())[0]


def run_workers(argv: list[str], workers: int, *, log: Callable[[str], None], command: str = "run") -> list[int]:
    """Run `run_search.py COMMAND ARGV --worker-index I` for I in 0..workers-1 and wait for all.

    The workers get their own sessions, so a Ctrl-C reaches them once, forwarded from here (as
    SIGINT; SIGTERM as SIGTERM); each closes its running trial and exits. A worker whose
    supervisor dies gets SIGTERM from the kernel (Linux), so none is left orphaned.
    """
    if workers < 1:
        raise ConfigError(f"--workers must be a positive integer, but got {workers=}.")
    script = _script()
    procs: list[subprocess.Popen] = []
    received: list[int] = []

    def forward(signum, _frame) -> None:
        received.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for i in range(workers):
            cmd = [sys.executable, script, command, *argv, "--worker-index", str(i)]
            procs.append(subprocess.Popen(cmd, start_new_session=True, preexec_fn=_die_with_parent))
        log(
            f"started {workers} workers (pids {', '.join(str(p.pid) for p in procs)}); each claims its cores and says how many threads it got"
        )
        codes = []
        for p in procs:
            while True:
                try:
                    codes.append(p.wait())
                    break
                except KeyboardInterrupt:  # a signal that arrived before the handler was installed
                    forward(signal.SIGINT, None)
        return codes
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _script() -> str:
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # search/run/ -> repo
    return os.path.join(repo, "run_search.py")


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


__all__ = ["TrialSlots", "SurplusTrial", "run_workers", "worker_threads", "is_queued", "SURPLUS"]
