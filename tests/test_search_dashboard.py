import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from search import is_loopback, make_storage, render_loss_curve
from tests._cli import free_port

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "host,loop", [("127.0.0.1", True), ("localhost", True), ("::1", True), ("0.0.0.0", False), ("10.1.2.3", False)]
)
def test_is_loopback(host, loop):
    assert is_loopback(host) is loop


def test_loss_curve_png(tmp_path):
    history = [
        {"step": s, "val_bpc": 4 - s / 100, "val_loss": 2.6 - s / 200, "train_loss": 2.7 - s / 200}
        for s in (60, 120, 180)
    ]
    render_loss_curve(history, tmp_path / "c.png", "t")
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    render_loss_curve(history[:1], tmp_path / "one.png", "a pruned trial's single point")
    assert (tmp_path / "one.png").stat().st_size > 0


@pytest.fixture
def store(tmp_path):
    url = f"sqlite:///{tmp_path}/d.db"
    optuna.create_study(study_name="d", storage=make_storage(url, heartbeat_interval=None))
    return url


@pytest.mark.slow
def test_binding_beyond_loopback_warns(store):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "run_search.py", "dashboard", "--storage", store, "--host", "0.0.0.0", "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = server.stderr.readline()
        assert line.startswith("warning: the dashboard listens on 0.0.0.0, reachable from other machines")
    finally:
        server.terminate()
        server.wait(10)


@pytest.mark.slow
def test_busy_port_is_one_line(store):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "run_search.py", "dashboard", "--storage", store, "--port", str(port)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith(f"error: cannot listen on 127.0.0.1:{port}")
    assert "Traceback" not in proc.stderr


def test_missing_store_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "run_search.py", "dashboard", "--storage", f"sqlite:///{tmp_path}/none.db"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
