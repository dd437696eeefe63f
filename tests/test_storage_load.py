"""bench/storage_load.py --quick runs on SQLite and PostgreSQL and ends with its JSON line."""

import json
import subprocess
import sys

import pytest

from tests._cli import REPO

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_storage_load_quick(postgres_url):
    proc = subprocess.run(
        [sys.executable, "bench/storage_load.py", "--quick"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["bench"] == "storage_load"
    for backend in ("sqlite", "postgresql"):
        r = last[backend]
        assert r["trials"] == 30 and r["contention_lock_errors"] == 0
        assert all(r[k] > 0 for k in ("suggest_s", "show_s", "api_cold_s", "api_warm_s", "contention_trials_per_s"))
    assert "| sqlite | 30 |" in proc.stdout and "| postgresql | 30 |" in proc.stdout
