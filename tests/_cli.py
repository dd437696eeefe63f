"""Helpers for tests that drive `run_search.py` as a user would: real processes, real signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

REPO = Path(__file__).resolve().parents[1]
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def run_search(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "run_search.py", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env
    )


def start(*args: str, stdout=subprocess.PIPE, stderr=subprocess.PIPE) -> subprocess.Popen:
    """`run_search.py ARGS` in a session of its own, so a signal to its group reaches it and its children only."""
    return subprocess.Popen(
        [sys.executable, "run_search.py", *args],
        cwd=REPO,
        stdout=stdout,
        stderr=stderr,
        text=True,
        start_new_session=True,
    )


def trials(url: str, name: str) -> list[FrozenTrial]:
    try:
        return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    except (KeyError, ValueError):  # the study or its tables do not exist yet
        return []


def wait_for(what: str, predicate: Callable[[], object], *, timeout: float = 180, procs: tuple = (), poll: float = 0.3):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(
                    f"process {p.args[2:4]} exited with {p.returncode} while waiting for {what}: {p.stderr.read()[-3000:] if p.stderr else ''}"
                )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def training_trial(url: str, name: str, worker_pid: int | None = None) -> FrozenTrial | None:
    """A RUNNING trial that has reported at least one evaluation (so its model trains right now)."""
    for t in trials(url, name):
        if t.state == TrialState.RUNNING and t.intermediate_values:
            if worker_pid is None or t.user_attrs.get("worker", "").endswith(f":{worker_pid}"):
                return t
    return None


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def group_alive(pgid: int) -> list[int]:
    """Pids still in process group `pgid` (the run, its forkserver and trial processes)."""
    alive = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid and int(entry) != os.getpid():
                    with open(f"/proc/{entry}/stat") as f:
                        if f.read().split(")")[-1].split()[0] != "Z":
                            alive.append(int(entry))
            except (ProcessLookupError, FileNotFoundError, PermissionError):
                continue
    return alive


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_consistent(ts: list[FrozenTrial], n_trials: int) -> None:
    """Exactly n_trials finished, each number once and none missing, nothing left RUNNING or WAITING."""
    numbers = [t.number for t in ts]
    assert sorted(numbers) == list(range(len(ts))), numbers
    assert sum(t.state in FINISHED for t in ts) == n_trials, [(t.number, t.state.name) for t in ts]
    assert not [t for t in ts if t.state in (TrialState.RUNNING, TrialState.WAITING)], [
        (t.number, t.state.name) for t in ts
    ]
