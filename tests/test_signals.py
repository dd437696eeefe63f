"""SIGINT (Ctrl-C) and SIGTERM (kill, a scheduler's stop) on a real `run_search.py run` process: the
running trial closes as FAIL `interrupted`, the store stays consistent, the exit is non-zero, and a
rerun resumes with the interrupted configuration first."""
import os
import signal
import time

import pytest
from optuna.trial import TrialState

from tests._cli import FINISHED, assert_consistent, group_alive, kill_group, run_search, start, trials, training_trial, wait_for

pytestmark = pytest.mark.slow


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


@pytest.mark.parametrize("sig", [signal.SIGTERM], ids=["SIGTERM"])
def test_signal_to_a_workers_supervisor_reaches_every_worker(sig, tmp_path, tiny_study):
    url = f"sqlite:///{tmp_path}/mfha.db"
    study = tiny_study(n_trials=4, steps=300)
    proc = start("run", "--study", str(study), "--storage", url, "--workers", "2", "--no-progress")
    try:
        wait_for("two trials to train", lambda: sum(t.state == TrialState.RUNNING and bool(t.intermediate_values)
                                                    for t in trials(url, "tiny")) >= 2, procs=(proc,))
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
