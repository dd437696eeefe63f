"""Workers on one PostgreSQL study (the server on 127.0.0.1:5432, a database of this test run's own):
exact counts with three processes, kill -9 recovered by the next run, passwords never shown."""

import json
import subprocess
import sys
import time
import urllib.request

import pytest
from optuna.trial import TrialState

from tests._cli import (
    FINISHED,
    REPO,
    assert_consistent,
    free_port,
    kill_group,
    run_search,
    start,
    training_trial,
    trials,
    wait_for,
)

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def test_three_workers_share_one_study(postgres_url, tiny_study):
    study = tiny_study("three", n_trials=7)
    procs = [start("run", "--study", str(study), "--storage", postgres_url, "--no-progress") for _ in range(3)]
    try:
        outs = [p.communicate(timeout=400) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                kill_group(p)
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        assert "Traceback" not in err, err[-6000:]
    ts = trials(postgres_url, "three")
    assert_consistent(ts, 7)
    done = [t for t in ts if t.state in FINISHED]
    assert len({t.user_attrs["worker"] for t in done}) >= 2
    # a trial that lost the race for the last slot is the only kind of FAIL allowed here
    assert all(t.user_attrs.get("fail_reason", "").startswith("surplus") for t in ts if t.state == TrialState.FAIL)


def test_kill_9_then_the_next_run_retries_the_stale_trial(postgres_url, tiny_study):
    study = tiny_study("crash", n_trials=2, steps=300)
    victim = start("run", "--study", str(study), "--storage", postgres_url, "--no-progress")
    try:
        killed = wait_for("a trial to train", lambda: training_trial(postgres_url, "crash"), procs=(victim,))
        kill_group(victim)
        victim.wait(10)
    finally:
        if victim.poll() is None:
            kill_group(victim)
    assert trials(postgres_url, "crash")[killed.number].state == TrialState.RUNNING  # nobody has noticed yet
    again = run_search("run", "--study", str(study), "--storage", postgres_url, "--no-progress", timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    ts = trials(postgres_url, "crash")
    assert ts[killed.number].state == TrialState.FAIL
    retries = [t for t in ts if t.system_attrs.get("failed_trial") == killed.number]
    assert retries and retries[0].state in FINISHED and retries[0].params == killed.params
    assert_consistent(ts, 2)


def test_a_storage_password_never_shows(postgres_url, tiny_study, tmp_path):
    secret = "s3cret-Pw"
    # the local server trusts loopback connections, so any password is accepted and must still be hidden
    url = postgres_url.replace("postgres@", f"postgres:{secret}@")
    study = tiny_study("secret", n_trials=1, steps=10)
    proc = run_search(
        "run", "--study", str(study), "--storage", url, "--no-progress", "--artifacts", str(tmp_path / "art")
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert secret not in proc.stdout + proc.stderr
    assert "postgres:***@" in proc.stdout + proc.stderr

    shown = run_search("show", "--study", "secret", "--storage", url)
    assert shown.returncode == 0 and secret not in shown.stdout + shown.stderr
    wrong = run_search("show", "--study", "secrte", "--storage", url)
    assert wrong.returncode == 1 and secret not in wrong.stderr and "postgres:***@" in wrong.stderr

    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "run_search.py",
            "dashboard",
            "--storage",
            url,
            "--port",
            str(port),
            "--artifacts",
            str(tmp_path / "art"),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        studies = wait_for("the dashboard", lambda: _get(f"{base}/api/studies"), timeout=60, procs=(server,))
        (summary,) = [s for s in studies["study_summaries"] if s["study_name"] == "secret"]
        detail = _get(f"{base}/api/studies/{summary['study_id']}")
        assert "postgres:***@" in detail["note"]["body"]
        assert secret not in json.dumps(detail) and secret not in json.dumps(studies)
    finally:
        server.terminate()
        out, err = server.communicate(timeout=20)
    assert secret not in out + err and "postgres:***@" in err


def _get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())
    except OSError:
        time.sleep(0.2)
        return None
