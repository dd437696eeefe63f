"""Several workers on one SQLite study: exact trial counts, `--workers N`, and kill -9 recovery."""

import os
import re
import signal
import subprocess
import sys
import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from search import make_storage
from search.run.host import CoreShare
from search.run.workers import SurplusTrial, TrialSlots, worker_threads
from tests._cli import (
    FINISHED,
    REPO,
    assert_consistent,
    kill_group,
    run_search,
    start,
    training_trial,
    trials,
    wait_for,
)

# these tests ask for trials by hand, outside `optimize`, which Optuna warns about with a heartbeat
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")


def _study(tmp_path, **kw):
    return optuna.create_study(study_name="s", storage=make_storage(f"sqlite:///{tmp_path}/s.db", **kw))


def test_a_trial_past_the_count_closes_as_surplus(tmp_path):
    study = _study(tmp_path)
    slots = TrialSlots(2, poll_s=0.01)
    a, b, c = study.ask(), study.ask(), study.ask()
    slots.claim(a)
    slots.claim(b)
    study.tell(a, 1.0)
    study.tell(b, 2.0)
    with pytest.raises(SurplusTrial, match="surplus: the study already holds its 2 finished trials"):
        slots.claim(c)
    assert c.study.get_trials()[2].user_attrs["fail_reason"].startswith("surplus")
    assert slots.wait_for_slot(study) is False


def test_a_trial_behind_the_last_slot_waits_and_takes_it_when_one_fails(tmp_path):
    study = _study(tmp_path)
    slots = TrialSlots(1, poll_s=0.01)
    a, b = study.ask(), study.ask()
    slots.claim(a)
    claimed = threading.Event()
    waiter = threading.Thread(target=lambda: (slots.claim(b), claimed.set()), daemon=True)
    waiter.start()
    time.sleep(0.3)
    assert not claimed.is_set()  # trial a holds the only slot
    study.tell(a, state=TrialState.FAIL)
    waiter.join(5)
    assert claimed.is_set()


def test_a_retry_ranks_ahead_of_fresh_trials(tmp_path):
    study = _study(tmp_path)
    slots = TrialSlots(2, poll_s=0.01, deadline=time.monotonic() + 0.5)
    fresh = study.ask()
    slots.claim(fresh)
    study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, system_attrs={"failed_trial": 0}))
    retry = study.ask()  # pops the waiting retry
    slots.claim(retry)  # ahead of it: nothing but finished trials
    late = study.ask()
    with pytest.raises(SurplusTrial):  # two trials ahead hold both slots until the deadline
        slots.claim(late)


def test_a_dead_workers_trial_is_failed_after_the_grace_period_and_queued_again(tmp_path):
    study = _study(tmp_path, heartbeat_interval=1, grace_period=1)
    dead = study.ask()
    x = dead.suggest_float("x", 0, 1)
    study._storage.record_heartbeat(dead._trial_id)  # then nothing: its worker died
    slots = TrialSlots(1, poll_s=0.2, deadline=time.monotonic() + 20)
    t0 = time.monotonic()
    assert slots.wait_for_slot(study) is True
    assert time.monotonic() - t0 >= 1
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {0: TrialState.FAIL, 1: TrialState.WAITING}
    retry = study.ask()
    assert retry.number == 1 and retry.params == {"x": x}


HOLD = """
import sys
from search.run.host import CoreShare
share = CoreShare(int(sys.argv[2]), folder=sys.argv[1], cores=4)
print(" ".join(map(str, sorted(share.held))), flush=True)
sys.stdin.read()  # hold the cores until the test closes stdin or kills this process
"""


def _holder(folder, want: int) -> tuple[subprocess.Popen, set[int]]:
    """Another process holding `want` of 4 cores in `folder`; returns it and the slots it got."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder), str(want)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    return proc, {int(x) for x in proc.stdout.readline().split()}


def test_two_processes_claim_disjoint_cores(tmp_path):
    proc, theirs = _holder(tmp_path, 2)
    try:
        with CoreShare(4, folder=tmp_path, cores=4) as mine:
            assert len(theirs) == 2 and set(mine.held) == {0, 1, 2, 3} - theirs
            assert mine.threads == 2
            assert mine.line() == f"4 cores, 2 held by another run (pid {proc.pid}): 2 torch threads per trial"
    finally:
        proc.kill()
        proc.wait()


def test_a_dead_holders_cores_are_free_again(tmp_path):
    proc, theirs = _holder(tmp_path, 4)
    assert theirs == {0, 1, 2, 3}
    with CoreShare(1, folder=tmp_path, cores=4) as late:
        assert not late.held and late.threads == 1  # all taken: one thread without a core of its own
    proc.send_signal(signal.SIGKILL)  # the kernel drops a dead process's locks; its pid stays in the files
    proc.wait()
    with CoreShare(4, folder=tmp_path, cores=4) as mine:
        assert (
            set(mine.held) == {0, 1, 2, 3}
            and mine.line() == "4 cores, none held by another run: 4 torch threads per trial"
        )


def test_a_run_without_a_core_waits_for_the_one_a_multi_threaded_holder_gives_back(tmp_path):
    first = CoreShare(2, folder=tmp_path, cores=2)
    second = CoreShare(2, folder=tmp_path, cores=2)
    assert (first.threads, len(second.held)) == (2, 0) and second.must_wait()
    assert re.fullmatch(
        r"2 cores, all held by another run \(pid \d+\): waits for one before its first trial .*", second.line()
    )
    assert first.refresh() == 1  # a run waits: the holder keeps its fair share, 2 cores // 2 runs
    second.wait(poll_s=0.01)
    assert len(second.held) == 1 and second.threads == 1
    assert first.refresh() == 1  # nobody waits any more, and no core is free
    second.close()
    assert first.refresh() == 2  # grows back to its cap once the other run is gone
    first.close()


def test_a_run_without_a_core_beside_single_threaded_holders_trains_at_once(tmp_path):
    holders = [CoreShare(1, folder=tmp_path, cores=2) for _ in range(2)]
    late = CoreShare(1, folder=tmp_path, cores=2)
    assert not late.held and not late.must_wait() and late.threads == 1
    assert "with one thread each: 1 torch thread per trial without a core of its own" in late.line()
    assert [h.refresh() for h in holders] == [1, 1]  # nothing to give back below one thread
    for share in (late, *holders):
        share.close()


def test_host_slots_can_be_turned_off(tmp_path, monkeypatch):
    from search.run.host import share_cores

    monkeypatch.setenv("MFHA_HOST_SLOTS", "0")
    lines: list[str] = []
    with share_cores(None, 1, 1, cache_dir=tmp_path, log=lines.append) as share:
        assert share.threads == 1 and not share.held and not (tmp_path / "host-slots").exists()
    assert lines == [
        f"{len(os.sched_getaffinity(0))} cores, shared with no other run (MFHA_HOST_SLOTS=0): 1 torch thread per trial"
        + (" (at most 1: training.threads = 1)" if len(os.sched_getaffinity(0)) > 1 else "")
    ]


@pytest.mark.slow
def test_the_first_line_of_a_run_names_its_threads(tmp_path, tiny_study):
    proc = run_search(
        "run",
        "--study",
        str(tiny_study(n_trials=1)),
        "--storage",
        f"sqlite:///{tmp_path}/mfha.db",
        "--no-progress",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = proc.stderr.splitlines()[0]
    assert re.fullmatch(r"\d+ cores, (none held by another run|\d+ held by .*): 1 torch thread per trial.*", first), (
        proc.stderr[-3000:]
    )


def test_worker_threads_never_oversubscribe():
    cores = len(os.sched_getaffinity(0))
    assert worker_threads(None, 1) == cores
    assert worker_threads(None, cores * 2) == 1
    assert worker_threads(64, 1) == cores
    assert worker_threads(1, 1) == 1


@pytest.mark.slow
def test_workers_flag_on_sqlite_runs_exactly_n_trials_without_lock_errors(tmp_path, tiny_study):
    url = f"sqlite:///{tmp_path}/mfha.db"
    proc = run_search(
        "run", "--study", str(tiny_study(n_trials=6)), "--storage", url, "--workers", "3", "--no-progress", timeout=400
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "locked" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-6000:]
    lines = proc.stderr.splitlines()
    assert re.fullmatch(r"\d+ cores, .*: 3 workers, each claiming up to 1 torch thread per trial.*", lines[0]), lines[0]
    assert (
        sum(bool(re.fullmatch(r"\[worker \d\] \d+ cores, .*: 1 torch thread per trial.*", line)) for line in lines) == 3
    )
    ts = trials(url, "tiny")
    assert_consistent(ts, 6)
    done = [t for t in ts if t.state in FINISHED]
    assert len({t.user_attrs["worker"] for t in done}) >= 2  # shared out, not one worker doing it all
    assert {t.user_attrs["threads"] for t in done} == {worker_threads(None, 3)}
    assert "study 'tiny':" in proc.stdout and "6 complete" in proc.stdout


@pytest.mark.slow
def test_kill_9_of_a_sqlite_worker_is_retried_by_the_live_one(tmp_path, tiny_study):
    url = f"sqlite:///{tmp_path}/mfha.db"
    study = tiny_study(n_trials=2, steps=300)
    victim = start("run", "--study", str(study), "--storage", url, "--no-progress")
    survivor = None
    try:
        killed = wait_for(
            "the victim to train a trial", lambda: training_trial(url, "tiny", victim.pid), procs=(victim,)
        )
        survivor = start("run", "--study", str(study), "--storage", url, "--no-progress")
        kill_group(victim)  # the worker, its forkserver and its trial process, as a crash would
        victim.wait(10)
        out, err = survivor.communicate(timeout=400)
    finally:
        for p in (victim, survivor):
            if p is not None and p.poll() is None:
                kill_group(p)
    assert survivor.returncode == 0, err[-3000:]
    ts = trials(url, "tiny")
    assert ts[killed.number].state == TrialState.FAIL
    retries = [t for t in ts if t.system_attrs.get("failed_trial") == killed.number]
    assert retries and retries[0].state in FINISHED and retries[0].params == killed.params
    assert_consistent(ts, 2)
