"""The dashboard listens on loopback unless told otherwise (and warns when it is), and checkpoints load
with weights_only=True. Passwords in storage URLs: tests/test_postgres.py and tests/test_bad_input.py."""

import ast
import subprocess
import sys
from pathlib import Path

import optuna
import psutil
import pytest

from search import make_storage
from tests._cli import REPO, free_port, wait_for

pytestmark = pytest.mark.slow


def _listening(proc: subprocess.Popen, port: int) -> list[str]:
    try:
        conns = psutil.Process(proc.pid).net_connections(kind="inet")
    except psutil.NoSuchProcess:
        return []
    return [c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN and c.laddr.port == port]


@pytest.mark.parametrize(
    "host,expected,warns", [(None, "127.0.0.1", False), ("0.0.0.0", "0.0.0.0", True)], ids=["default", "all-interfaces"]
)
def test_dashboard_binds_loopback_unless_told(tmp_path, host, expected, warns):
    url = f"sqlite:///{tmp_path}/mfha.db"
    optuna.create_study(study_name="s", storage=make_storage(url))
    port = free_port()
    args = [sys.executable, "run_search.py", "dashboard", "--storage", url, "--port", str(port)]
    server = subprocess.Popen(
        args + (["--host", host] if host else []), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert wait_for("the dashboard to listen", lambda: _listening(server, port), timeout=60, procs=(server,)) == [
            expected
        ]
    finally:
        server.terminate()
        _, err = server.communicate(timeout=20)
    warning = "reachable from other machines, with no authentication"
    assert (warning in err) is warns, err


def test_every_checkpoint_load_is_weights_only():
    calls = []
    for path in [
        *REPO.glob("mfha/*.py"),
        *REPO.glob("search/**/*.py"),
        *REPO.glob("bench/*.py"),
        REPO / "run_search.py",
    ]:
        for node in ast.walk(ast.parse(Path(path).read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                kw = {k.arg: k.value for k in node.keywords}
                calls.append(
                    (
                        path.name,
                        node.lineno,
                        isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True,
                    )
                )
    assert calls, "no torch.load call found: the scan looks in the wrong place"
    assert all(ok for *_, ok in calls), [c for c in calls if not c[2]]
