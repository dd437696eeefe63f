"""optuna-dashboard over a study's storage and artifact store (what `search.run.artifacts` wrote:
each trial's configs, metrics.csv and loss curve, and the study note), bound to loopback unless told.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from pathlib import Path

from mfha.errors import ConfigError
from search.store.storage import artifact_store, default_artifacts_dir, make_storage, mask_url


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(storage_url: str, *, host: str = "127.0.0.1", port: int = 8080, artifacts: str | Path | None = None) -> None:
    """Serve optuna-dashboard until interrupted (blocking)."""
    import optuna_dashboard

    if not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError(f"--port must be in 1..65535, but got {port=}.")
    storage = make_storage(storage_url, heartbeat_interval=None, create=False)
    folder = Path(artifacts) if artifacts is not None else default_artifacts_dir(storage_url)
    store = artifact_store(folder)
    _check_port_free(host, port)
    if not is_loopback(host):
        print(
            f"warning: the dashboard listens on {host}, reachable from other machines, with no authentication; "
            f"anyone who can reach {host}:{port} can read and edit the studies.",
            file=sys.stderr,
        )
    print(
        f"dashboard: http://{host}:{port}/dashboard  storage {mask_url(storage_url)}  artifacts {folder}",
        file=sys.stderr,
        flush=True,
    )
    optuna_dashboard.run_server(storage, host=host, port=port, artifact_store=store)


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise ConfigError(
                f"cannot listen on {host}:{port} ({e.strerror}); pass another --port or --host."
            ) from None


__all__ = ["serve", "is_loopback"]
