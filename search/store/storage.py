"""Storage made in one place from a URL: SQLite by default, any SQLAlchemy URL (PostgreSQL, MySQL).

Every log line and error shows the URL through `mask_url`, so a password never leaves this module.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from difflib import get_close_matches
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from mfha.errors import ConfigError
from search.store.fast import FastReadRDBStorage
from search.study.types import DEFAULT_STORAGE

HEARTBEAT_INTERVAL_S = 30
GRACE_PERIOD_S = 90  # three missed heartbeats: a trial this stale belongs to a dead worker
MAX_RETRY = 2
SQLITE_BUSY_TIMEOUT_S = 60
CREATE_ATTEMPTS = 5
DEFAULT_ARTIFACTS = Path("storage/artifacts")
URL_EXAMPLE = "sqlite:///storage/mfha.db or postgresql+psycopg://USER:PASS@HOST/DB"


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, also for strings SQLAlchemy cannot parse."""
    text = str(url)
    if "://" in text:
        return re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)
    # not a URL at all (a missing "//", say): still hide anything shaped like user:password@
    return re.sub(r"(^|[/\s])([^:/@\s]*):([^@\s]*)@", r"\1\2:***@", text)


def sqlite_path(url: str) -> Path | None:
    """The database file of a sqlite URL (None for in-memory or other databases)."""
    m = re.fullmatch(r"sqlite(?:\+\w+)?:///(.*)", url)
    if not m or m.group(1) in ("", ":memory:"):
        return None
    return Path(m.group(1).split("?")[0])


def default_artifacts_dir(url: str) -> Path:
    """Artifacts live beside a SQLite file (storage/artifacts for the default); elsewhere in storage/artifacts."""
    db = sqlite_path(url)
    return db.parent / "artifacts" if db is not None else DEFAULT_ARTIFACTS


def make_storage(
    url: str | None = None,
    *,
    flag: str = "--storage",
    heartbeat_interval: int | None = HEARTBEAT_INTERVAL_S,
    grace_period: int | None = GRACE_PERIOD_S,
    max_retry: int = MAX_RETRY,
    create: bool = True,
) -> RDBStorage:
    """An RDBStorage for `url` with a heartbeat, and stale trials (a dead worker's) retried.

    `create=False` is for readers (show, export, dashboard): a missing SQLite file is then an error
    rather than a new empty database.
    """
    url = url or DEFAULT_STORAGE
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"{flag} must be an SQLAlchemy URL like {URL_EXAMPLE}, but got {flag}={mask_url(url)!r}.")
    db = sqlite_path(url)
    if db is not None:
        _prepare_sqlite_file(db, flag, create)
    import sqlalchemy.exc

    engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}} if db is not None else {}
    try:
        with warnings.catch_warnings():
            # the heartbeat and its retry callback are flagged experimental in Optuna 5; they are its
            # documented way to recover a dead worker's trials
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            callback = RetryHeartbeatStaleTrialCallback(max_retry=max_retry) if heartbeat_interval else None
            kwargs: dict[str, Any] = dict(
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period if heartbeat_interval else None,
                heartbeat_stale_trial_callback=callback,
            )
            for attempt in range(CREATE_ATTEMPTS):
                try:
                    storage = FastReadRDBStorage(url, **kwargs)
                    break
                except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as e:
                    if not _creation_race(e):
                        raise
                    # other processes are creating the same new database at this moment (tables, the
                    # schema version row, alembic's table: each step can collide); what they made
                    # exists now, so the next open goes further, and the last one only reads
                    if attempt == CREATE_ATTEMPTS - 1:
                        raise
                    time.sleep(0.2 * (attempt + 1))
    except sqlalchemy.exc.NoSuchModuleError:
        raise ConfigError(
            f"{flag} names a database driver SQLAlchemy does not know; use a URL like {URL_EXAMPLE}, but got {flag}={mask_url(url)!r}."
        ) from None
    except sqlalchemy.exc.ArgumentError:
        raise ConfigError(
            f"{flag} must be an SQLAlchemy URL like {URL_EXAMPLE}, but got {flag}={mask_url(url)!r}."
        ) from None
    except ImportError as e:
        raise ConfigError(
            f"{flag}={mask_url(url)!r} needs a database driver that is not installed ({_first_line(e)}); for PostgreSQL: pip install 'psycopg[binary]'."
        ) from None
    except sqlalchemy.exc.OperationalError as e:
        raise ConfigError(
            f"cannot reach the database {flag}={mask_url(url)!r}: {mask_url(_first_line(e.orig or e))}."
        ) from None
    except sqlalchemy.exc.DatabaseError as e:  # OperationalError's parent: SQLite's "file is not a database"
        if db is None:
            raise
        # found here rather than by reading the file's header first: opening and closing the file in a
        # process that holds SQLite connections to it drops their POSIX locks (https://sqlite.org/howtocorrupt.html)
        raise ConfigError(
            f"{flag} must name a SQLite database or a new file, but got {flag}={mask_url(url)!r}, whose file "
            f"{str(db)!r} SQLite cannot read ({_first_line(e.orig or e)}); pass {flag} with another file name, "
            f"or move that file away."
        ) from None
    if db is not None:
        _tune_sqlite(storage)
    return storage


def _creation_race(e: Exception) -> bool:
    """An error that only a concurrent creation of the same tables raises (unique key, or PostgreSQL's
    duplicate table / duplicate object)."""
    import sqlalchemy.exc

    return isinstance(e, sqlalchemy.exc.IntegrityError) or getattr(getattr(e, "orig", None), "sqlstate", None) in (
        "42P07",
        "42710",
    )


def _prepare_sqlite_file(db: Path, flag: str, create: bool) -> None:
    if not create:
        if not db.is_file():
            raise ConfigError(
                f"{flag} points at {str(db)!r}, which does not exist; run a study first or pass the URL it used."
            )
        return
    folder = make_folder(db.parent if str(db.parent) else Path("."), f"the storage folder {{folder}} for {flag}")
    if not os.access(folder, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
        raise ConfigError(
            f"the storage folder {str(folder)!r} is not writable; pass {flag} with a URL in a folder you can write."
        )


def _tune_sqlite(storage: RDBStorage) -> None:
    """WAL with synchronous=NORMAL: a commit without an fsync, so a trial's dozens of small writes
    cost milliseconds, not one fsync each; readers (the dashboard) never block the writer.
    """
    from sqlalchemy import event

    def on_connect(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(storage.engine, "connect", on_connect)
    storage.engine.dispose()  # connections opened during setup predate the listener


def open_study(storage_url: str, name: str) -> optuna.Study:
    storage = make_storage(storage_url, heartbeat_interval=None, create=False)
    names = optuna.get_all_study_names(storage)
    if name not in names:
        near = get_close_matches(name, names, n=1)
        hint = (
            f"did you mean {near[0]!r}?"
            if near
            else (f"stored: {', '.join(sorted(names))}." if names else "it holds no study yet.")
        )
        raise ConfigError(f"--study {name!r} is not in {mask_url(storage_url)}; {hint}")
    return optuna.load_study(study_name=name, storage=storage)


def artifact_store(folder: str | Path) -> FileSystemArtifactStore:
    """Optuna's file artifact store in `folder`, created if need be."""
    folder = make_folder(folder, "the artifact folder {folder} (--artifacts)")
    return FileSystemArtifactStore(str(folder))


def make_folder(folder: str | Path, what: str) -> Path:
    """`folder`, created with its parents; else one ConfigError line, "cannot create <what>: <why>."
    (`what` names the folder and its flag, with `{folder}` where the path goes)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create {what.format(folder=repr(str(folder)))}: {e.strerror}.") from None
    return folder


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


__all__ = [
    "make_storage",
    "open_study",
    "artifact_store",
    "make_folder",
    "mask_url",
    "sqlite_path",
    "default_artifacts_dir",
    "HEARTBEAT_INTERVAL_S",
    "GRACE_PERIOD_S",
]
