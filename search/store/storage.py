"""Storage made in one place from a URL: SQLite by default, any SQLAlchemy URL (PostgreSQL, MySQL).

Every log line and error shows the URL through `mask_url`, so a password never leaves this module.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import sqlite3
import time
import warnings
from difflib import get_close_matches
from pathlib import Path
from typing import Any
from urllib.parse import quote

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._rdb import models

from mfha.errors import ConfigError, first_line
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

    `create=False` is for readers (show, export, dashboard): they write nothing on open. A missing
    SQLite file, or a database without Optuna's tables, is then an error rather than a new store, and
    a SQLite file that this process cannot write is read through a read-only connection.
    """
    if url is None:
        url = DEFAULT_STORAGE
    if isinstance(url, str) and not url.strip():
        # `--storage "$MFHA_STORAGE"` with the variable unset: the default store would be a silent guess
        raise ConfigError(
            f'{flag} is empty (an unset variable, as in {flag} "$MFHA_STORAGE"?); pass {flag} a URL like '
            f"{URL_EXAMPLE}, or leave {flag} out for the default {DEFAULT_STORAGE}."
        )
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"{flag} must be an SQLAlchemy URL like {URL_EXAMPLE}, but got {flag}={mask_url(url)!r}.")
    db = sqlite_path(url)
    if db is not None:
        _prepare_sqlite_file(db, flag, create)
    import sqlalchemy.exc

    engine_kwargs: dict[str, Any] = {}
    if db is not None:
        engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
        if not create and not _writable(db):
            engine_kwargs = {"creator": _read_only_connector(db)}
    try:
        if db is None or not create or _holds_data(db):
            _check_store(url, engine_kwargs, db, flag, create)
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
                # a reader's store was checked complete above; creating tables would write to it
                skip_table_creation=not create,
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
            f"{flag}={mask_url(url)!r} needs a database driver that is not installed ({first_line(e)}); for PostgreSQL: pip install 'psycopg[binary]'."
        ) from None
    except sqlalchemy.exc.DatabaseError as e:
        if db is not None and _sqlite_error(e).startswith("SQLITE_CORRUPT"):
            raise _damaged(db, url, flag) from None
        if isinstance(e, sqlalchemy.exc.OperationalError):
            raise ConfigError(
                f"cannot reach the database {flag}={mask_url(url)!r}: {mask_url(first_line(e.orig or e))}."
            ) from None
        if db is None:
            raise
        # SQLite's "file is not a database"; found here rather than by reading the file's header first:
        # opening and closing the file in a process that holds SQLite connections to it drops their
        # POSIX locks (https://sqlite.org/howtocorrupt.html)
        raise ConfigError(
            f"{flag} must name a SQLite database or a new file, but got {flag}={mask_url(url)!r}, whose file "
            f"{str(db)!r} SQLite cannot read ({first_line(e.orig or e)}); pass {flag} with another file name, "
            f"or move that file away."
        ) from None
    if db is not None and create:
        _tune_sqlite(storage)
    return storage


# Optuna's tables (alembic's included) and their key columns: a table of one of these names without
# its key column belongs to another program
_OPTUNA_KEYS = {t.name: [c.name for c in t.primary_key.columns] for t in models.BaseModel.metadata.sorted_tables}
_OPTUNA_KEYS["alembic_version"] = ["version_num"]


def _check_store(url: str, engine_kwargs: dict[str, Any], db: Path | None, flag: str, create: bool) -> None:
    """Refuse, before Optuna opens it, a database Optuna would write to wrongly: another program's
    (Optuna would add its tables to it), an incomplete store for a reader (Optuna would complete it,
    a write), or a damaged SQLite file (its errors would surface deep in a read, as tracebacks)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, **engine_kwargs)
    try:
        with engine.connect() as conn:
            inspector = sqlalchemy.inspect(conn)
            tables = sorted(inspector.get_table_names())
            ours = [t for t in tables if t in _OPTUNA_KEYS]
            # e.g. an application's own `studies` table, which Optuna's queries then fail on
            misshapen = [t for t in ours if not set(_OPTUNA_KEYS[t]) <= {c["name"] for c in inspector.get_columns(t)}]
            # Optuna writes its version rows on open where they are missing: a reader needs them present
            required = ("studies", "version_info", "alembic_version")
            complete = create or (
                all(t in ours for t in required)
                and all(conn.execute(sqlalchemy.text(f"SELECT COUNT(*) FROM {t}")).scalar() for t in required[1:])
            )
            # milliseconds for a thousand trials: damage from a crash or a full disk shows here, once,
            # rather than as a traceback from whichever read reaches the broken page
            if db is not None and conn.exec_driver_sql("PRAGMA quick_check(1)").scalar() != "ok":
                raise _damaged(db, url, flag)
    finally:
        engine.dispose()
    # a server database may hold other applications' tables beside Optuna's, but a SQLite file is one
    # program's: a run adds no tables to a file that has only others
    foreign = misshapen or not complete or (create and db is not None and tables and not ours)
    if foreign:
        what = f"the SQLite file {str(db)!r}" if db is not None else "the database"
        names = [f"{t} (not Optuna's)" if t in misshapen else t for t in tables]
        listed = (
            f"its tables: {', '.join(names[:8])}{', ...' if len(names) > 8 else ''}" if tables else "it has no tables"
        )
        fix = (
            f"pass {flag} with the URL the study was run with"
            if not create
            else f"pass {flag} with a new file name or an existing study store; no tables are added to another program's database"
        )
        raise ConfigError(
            f"{flag}={mask_url(url)!r} names {what}, which holds no Optuna study store ({listed}); {fix}."
        )


def _damaged(db: Path, url: str, flag: str) -> ConfigError:
    new = db.with_name(f"{db.stem}-recovered{db.suffix}")
    return ConfigError(
        f"{flag}={mask_url(url)!r} names the SQLite file {str(db)!r}, which is damaged (database disk image is "
        f"malformed), as a crash or a full disk can leave it; restore it from a backup, or salvage what is left with "
        f"`sqlite3 {shlex.quote(str(db))} .recover | sqlite3 {shlex.quote(str(new))}` and pass {flag} sqlite:///{new}."
    )


def _sqlite_error(e: Exception) -> str:
    """SQLite's error name (SQLITE_CORRUPT, SQLITE_NOTADB, ...) behind a SQLAlchemy error, else ''."""
    return str(getattr(getattr(e, "orig", None), "sqlite_errorname", ""))


def _holds_data(db: Path) -> bool:
    """A file with content (a new or empty file is a new store: nothing in it to check)."""
    try:
        return db.stat().st_size > 0
    except OSError:
        return False


def _companions(db: Path) -> list[Path]:
    """The -wal and -shm files SQLite keeps beside a WAL store while it is open (or left behind)."""
    return [db.with_name(db.name + end) for end in ("-wal", "-shm")]


def _writable(db: Path) -> bool:
    """Whether this process may write the store: its folder, its file and any -wal or -shm file."""
    files = [db, *(p for p in _companions(db) if p.exists())]
    return os.access(db.parent if str(db.parent) else Path("."), os.W_OK) and all(os.access(p, os.W_OK) for p in files)


def _read_only_connector(db: Path) -> functools.partial:
    """Connections for a reader that cannot write the store (see `_writable`): SQLite opens the file read-only.
    Read-only, a WAL store still wants a -shm file, which a read-only folder refuses (SQLite then fails
    with "attempt to write a readonly database"), and which otherwise stays behind with the file's
    read-only mode, so that the owner cannot write the store again even once it is writable. With no
    -wal or -journal file no writer is mid-way, so the file is read as immutable: no locks, no -shm.
    (A module function in a partial, so the storage still pickles.)"""
    busy = any(db.with_name(db.name + end).exists() for end in ("-wal", "-journal"))
    uri = f"file:{quote(os.path.abspath(db))}?mode=ro" + ("" if busy else "&immutable=1")
    return functools.partial(sqlite3.connect, uri, uri=True, timeout=SQLITE_BUSY_TIMEOUT_S, check_same_thread=False)


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
    if not os.access(folder, os.W_OK):
        raise ConfigError(
            f"the storage folder {str(folder)!r} is not writable; pass {flag} with a URL in a folder you can write."
        )
    # SQLite writes the -wal and -shm files beside the store too; a reader of a read-only store can leave them
    for file in (db, *_companions(db)):
        if file.exists() and not os.access(file, os.W_OK):
            raise ConfigError(
                f"the storage file {str(file)!r} is read-only; make it writable, or pass {flag} with a URL of a file you can write."
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


def storage_flag(storage_url: str) -> str:
    """` --storage URL` for a printed command (password masked), or nothing for the default store."""
    return "" if storage_url == DEFAULT_STORAGE else f" --storage {shlex.quote(mask_url(storage_url))}"


def make_folder(folder: str | Path, what: str) -> Path:
    """`folder`, created with its parents; else one ConfigError line, "cannot create <what>: <why>."
    (`what` names the folder and its flag, with `{folder}` where the path goes)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create {what.format(folder=repr(str(folder)))}: {e.strerror}.") from None
    return folder


__all__ = [
    "make_storage",
    "open_study",
    "artifact_store",
    "make_folder",
    "storage_flag",
    "mask_url",
    "sqlite_path",
    "default_artifacts_dir",
    "HEARTBEAT_INTERVAL_S",
    "GRACE_PERIOD_S",
]
