"""SIGINT (Ctrl-C) and SIGTERM (kill, a scheduler's stop) on a real `run_search.py run` process: the
running trial closes as FAIL `interrupted`, the store stays consistent, the exit is non-zero, and a
rerun resumes with the interrupted configuration first."""

import os
import signal
import time
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

from search import make_storage
from search.run.console import Bars as _Bars
from search.run.runner import drive
from tests._cli import (
    FINISHED,
    assert_consistent,
    group_alive,
    kill_group,
    run_search,
    start,
    training_trial,
    trials,
    wait_for,
)


class _Quick:
    """An objective that trains nothing: one suggested number, then a look for a pending signal, as
    the training loop does; a trial takes milliseconds."""

    def __init__(self) -> None:
        self.settings = SimpleNamespace(threads=1)
        self.extra_attrs: dict = {}
        self.current_trial_id = self.current_trial_number = None
        self.check_interrupt = lambda: None
        self.overhead_s = self.train_s = 0.0
        self.closed = False

    def __call__(self, trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        self.check_interrupt()
        return x

    def close(self) -> None:
        self.closed = True


def _signal_inside(monkeypatch, storage, method: str, sent: list, when=lambda *a, **k: True) -> None:
    """`storage.METHOD` sends this process SIGTERM from inside the write, once, where `when(args)`
    holds: the Python handler then runs in the middle of Optuna's storage bookkeeping."""
    original = getattr(storage, method)
    mine: list[int] = []

    def write(*args, **kwargs):
        out = original(*args, **kwargs)
        if not mine and when(*args, **kwargs):
            # without a handler, SIGTERM would end pytest itself
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None), f"no SIGTERM handler during {method}"
            mine.append(1)
            sent.append(method)
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(storage, method, write)


def _drive(tmp_path, monkeypatch, signals: dict, total: int = 3):
    storage = make_storage(f"sqlite:///{tmp_path}/s.db")
    study = optuna.create_study(study_name="s", storage=storage)
    sent: list[str] = []
    for method, when in signals.items():
        _signal_inside(monkeypatch, storage, method, sent, when)
    objective = _Quick()
    summary = drive(
        study,
        storage,
        objective,
        _Bars("s", total, 0, enabled=False, log=print),
        total=total,
        timeout_s=None,
        log=print,
        t_start=time.perf_counter(),
    )
    return summary, study.get_trials(), sent, objective


def test_sigterm_while_optuna_records_a_finished_trial_stops_cleanly(tmp_path, monkeypatch):
    # the CI flake: the signal landed while Optuna recorded a finished trial, whose bookkeeping then
    # raised UnboundLocalError ('updated_state') on top of the interrupt
    completing = lambda trial_id, state, values=None: state == TrialState.COMPLETE
    summary, ts, sent, objective = _drive(tmp_path, monkeypatch, {"set_trial_state_values": completing})
    assert sent and summary.interrupted and objective.closed
    assert [t.state for t in ts] == [TrialState.COMPLETE]


def test_sigterm_while_optuna_creates_a_trial_leaves_none_running(tmp_path, monkeypatch):
    summary, ts, sent, _ = _drive(tmp_path, monkeypatch, {"_create_new_trial": lambda *a, **k: True})
    assert sent and summary.interrupted
    assert [t.state for t in ts] == [TrialState.FAIL]


def test_more_signals_while_the_trial_closes_are_ignored(tmp_path, monkeypatch):
    summary, ts, sent, objective = _drive(
        tmp_path,
        monkeypatch,
        {
            "_set_trial_param": lambda *a, **k: True,  # the first, as the trial writes its parameter
            "set_trial_state_values": lambda trial_id, state, values=None: (
                state == TrialState.FAIL
            ),  # Optuna closing it
            "_create_new_trial": lambda study_id, template_trial=None: (
                template_trial is not None
            ),  # the retry we enqueue
        },
    )
    assert len(sent) == 3 and summary.interrupted and objective.closed
    assert ts[0].state == TrialState.FAIL
    assert (
        ts[1].state == TrialState.WAITING
        and ts[1].user_attrs["retry_of"] == 0
        and ts[1].system_attrs["fixed_params"] == ts[0].params
    )


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_closes_the_trial_and_a_rerun_resumes(sig, tmp_path, tiny_study):
    url = f"sqlite:///{tmp_path}/mfha.db"
    study = tiny_study(n_trials=2, steps=300)
    proc = start("run", "--study", str(study), "--storage", url, "--no-progress")
    try:
        stopped = wait_for("a trial to train", lambda: training_trial(url, "tiny"), procs=(proc,))
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)  # Ctrl-C reaches the whole foreground group
        else:
            proc.send_signal(sig)  # `kill PID` reaches the study process alone
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            kill_group(proc)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "interrupted" in err, err[-6000:]
    ts = trials(url, "tiny")
    assert not [t for t in ts if t.state == TrialState.RUNNING]
    closed = ts[stopped.number]
    assert closed.state == TrialState.FAIL and closed.user_attrs["fail_reason"] == "interrupted"
    time.sleep(0.5)
    assert not group_alive(proc.pid), "a process of the interrupted run outlived it"

    again = run_search("run", "--study", str(study), "--storage", url, "--no-progress", timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    ts = trials(url, "tiny")
    assert_consistent(ts, 2)
    resumed = [t for t in ts if t.user_attrs.get("retry_of") == stopped.number]
    assert resumed and resumed[0].state in FINISHED and resumed[0].params == closed.params


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM], ids=["SIGTERM"])
def test_signal_to_a_workers_supervisor_reaches_every_worker(sig, tmp_path, tiny_study):
    url = f"sqlite:///{tmp_path}/mfha.db"
    study = tiny_study(n_trials=4, steps=300)
    proc = start("run", "--study", str(study), "--storage", url, "--workers", "2", "--no-progress")
    try:
        wait_for(
            "two trials to train",
            lambda: (
                sum(t.state == TrialState.RUNNING and bool(t.intermediate_values) for t in trials(url, "tiny")) >= 2
            ),
            procs=(proc,),
        )
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            kill_group(proc)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-6000:]
    ts = trials(url, "tiny")
    assert not [t for t in ts if t.state == TrialState.RUNNING]
    assert sum(t.user_attrs.get("fail_reason") == "interrupted" for t in ts) == 2
