"""Bad stores through the real CLI: an empty --storage, another program's SQLite file, a read-only
store and a damaged one. A mistake is exit code 1 and exactly one stderr line naming the flag and
the fix; the store file is byte-for-byte what it was, and a read-only store is still readable."""

import hashlib
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from search import make_storage
from tests._cli import REPO, free_port, run_search

pytestmark = pytest.mark.slow

DEFAULT_DB = REPO / "storage" / "mfha.db"
URL_EXAMPLE = "sqlite:///storage/mfha.db or postgresql+psycopg://USER:PASS@HOST/DB"


def make_store(folder: Path) -> str:
    """A store whose study 'keep' has three COMPLETE trials that `export` can write out."""
    from mfha import ModelConfig, TrainConfig

    url = f"sqlite:///{folder}/mfha.db"

    def objective(trial):
        trial.set_user_attr("model_config", ModelConfig().to_dict())
        trial.set_user_attr("train_config", TrainConfig().to_dict())
        return trial.suggest_float("x", 0, 1)

    storage = make_storage(url, heartbeat_interval=None)
    optuna.create_study(study_name="keep", storage=storage).optimize(objective, n_trials=3)
    storage.engine.dispose()  # the last connection closed: the WAL is checkpointed into the file
    return url


def digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def snapshot(url: str) -> list:
    """The trials of 'keep', read with every connection closed after: an open one would keep the
    store's -wal and -shm files in place, which a reader of a read-only store depends on."""
    storage = optuna.storages.RDBStorage(url)
    try:
        study = optuna.load_study(study_name="keep", storage=storage)
        return [(t.number, t.state, t.params, t.value) for t in study.get_trials(deepcopy=False)]
    finally:
        storage.engine.dispose()


def one_line(proc: subprocess.CompletedProcess) -> str:
    """The only stderr line of a refused command (exit code 1, no traceback, nothing else)."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


READ_COMMANDS = {
    "show": ["show", "--study", "keep"],
    "export": ["export", "--study", "keep"],
    "report": ["report", "--study", "keep"],
    "studies": ["studies"],
    "dashboard": ["dashboard"],
    "validate": ["validate", "--study", "keep"],
}


@pytest.mark.parametrize(
    "command,value", [(c, "") for c in READ_COMMANDS] + [("show", "  ")], ids=[*READ_COMMANDS, "show-blank"]
)
def test_an_empty_storage_url_is_refused_not_read_as_the_default(command, value, tmp_path):
    """`--storage "$MFHA_STORAGE"` with the variable unset passes "": not the default store, silently."""
    before = digest(DEFAULT_DB)
    args = [*READ_COMMANDS[command], "--storage", value]
    if command in ("export", "report"):
        args += ["--out", str(tmp_path / "out")]
    if command == "dashboard":
        args += ["--port", str(free_port())]
    line = one_line(run_search(*args, timeout=120))
    assert line == (
        f'error: --storage is empty (an unset variable, as in --storage "$MFHA_STORAGE"?); pass --storage a URL '
        f"like {URL_EXAMPLE}, or leave --storage out for the default sqlite:///storage/mfha.db."
    )
    assert digest(DEFAULT_DB) == before
    assert not (tmp_path / "out").exists()


def foreign_db(path: Path, table: str) -> Path:
    with sqlite3.connect(path) as conn:
        conn.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, title TEXT)")
        conn.execute(f"INSERT INTO {table} (title) VALUES ('mine')")
    conn.close()
    return path


@pytest.mark.parametrize("table", ["notes", "studies"])
def test_another_programs_sqlite_file_is_left_as_it_is(table, tmp_path, tiny_study):
    """Neither a reader nor `run` adds Optuna's tables to a user's database; a table that shares
    Optuna's name `studies` is not mistaken for Optuna's."""
    db = foreign_db(tmp_path / "app.db", table)
    url = f"sqlite:///{db}"
    study = tiny_study()
    before, files = digest(db), sorted(p.name for p in tmp_path.iterdir())
    listed = "notes" if table == "notes" else "studies (not Optuna's)"
    prefix = f"error: --storage='{url}' names the SQLite file '{db}', which holds no Optuna study store (its tables: {listed}); "
    line = one_line(run_search("show", "--study", "keep", "--storage", url, timeout=120))
    assert line == prefix + "pass --storage with the URL the study was run with."
    line = one_line(run_search("run", "--study", str(study), "--storage", url, "--no-progress", timeout=120))
    assert line == prefix + (
        "pass --storage with a new file name or an existing study store; no tables are added to another program's database."
    )
    assert digest(db) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == files  # no -wal, -shm or -journal left either
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        assert conn.execute(f"SELECT title FROM {table}").fetchall() == [("mine",)]
    conn.close()


# --- read-only stores ---------------------------------------------------------------------------------

# as root the permission bits do not bind, unless the capabilities that override them are dropped
DROP_ROOT_OVERRIDES = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner,-linux_immutable"]


def _setpriv_works(tmp_path: Path) -> bool:
    if not shutil.which("setpriv"):
        return False
    probe = tmp_path / "probe"
    probe.write_text("x")
    probe.chmod(0o444)
    try:
        code = f"open({str(probe)!r}, 'a')"
        proc = subprocess.run([*DROP_ROOT_OVERRIDES, sys.executable, "-c", code], capture_output=True, text=True)
        return proc.returncode != 0 and "Permission denied" in proc.stderr
    finally:
        probe.unlink()


@pytest.fixture
def lock(tmp_path):
    """lock(folder, file=True, directory=True) makes the store file and/or its folder read-only and
    returns how to run the CLI under it: permission bits (as root: with the capabilities that
    override them dropped, via setpriv), or as root without setpriv, `chattr +i`."""
    locked: list[tuple[Path, str]] = []
    root = os.geteuid() == 0
    how = "bits" if not root or _setpriv_works(tmp_path) else "chattr" if shutil.which("chattr") else None
    if how is None:
        pytest.skip("root without setpriv or chattr: no way to make a file read-only for this process")

    def apply(db: Path, *, file: bool = True, directory: bool = True):
        for path, on in ((db, file), (db.parent, directory)):
            if not on:
                continue
            if how == "bits":
                path.chmod(0o555 if path.is_dir() else 0o444)
            else:
                subprocess.run(["chattr", "+i", str(path)], check=True)
            locked.append((path, how))

        def cli(*args: str) -> subprocess.CompletedProcess:
            if how == "bits" and root:
                return subprocess.run(
                    [*DROP_ROOT_OVERRIDES, sys.executable, "run_search.py", *args],
                    cwd=REPO,
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
            return run_search(*args)

        return cli

    yield apply
    for path, how in reversed(locked):
        if how == "chattr":
            subprocess.run(["chattr", "-i", str(path)], check=True)
        path.chmod(0o755 if path.is_dir() else 0o644)


@pytest.mark.parametrize("file,directory", [(True, False), (False, True), (True, True)], ids=["file", "folder", "both"])
def test_a_read_only_store_is_read(file, directory, lock, tmp_path):
    """show, export and report open a store they cannot write read-only: no table creation, no WAL
    switch, no -shm left behind (whose read-only mode would lock out the owner's next run)."""
    folder = tmp_path / "store"
    folder.mkdir()
    url = make_store(folder)
    db = folder / "mfha.db"
    trials_before, before, files = snapshot(url), digest(db), sorted(p.name for p in folder.iterdir())
    assert files == ["mfha.db"]  # no -wal or -shm to lean on: a reader that needs them must make them
    cli = lock(db, file=file, directory=directory)
    outs = {
        "show": cli("show", "--study", "keep", "--storage", url),
        "export": cli("export", "--study", "keep", "--storage", url, "--out", str(tmp_path / "export")),
        "report": cli("report", "--study", "keep", "--storage", url, "--out", str(tmp_path / "report")),
    }
    listing = sorted(p.name for p in folder.iterdir())
    for name, proc in outs.items():
        assert proc.returncode == 0, (name, proc.stderr[-3000:])
        assert "Traceback" not in proc.stderr and "error:" not in proc.stderr, (name, proc.stderr[-3000:])
    assert re.search(r"^\s+0\s+COMPLETE", outs["show"].stdout, re.M), outs["show"].stdout
    assert (tmp_path / "export" / "trial.json").is_file() and (tmp_path / "report" / "summary.md").is_file()
    assert digest(db) == before
    assert listing == files
    assert snapshot(url) == trials_before


def test_run_names_the_read_only_file_not_its_writable_folder(lock, tmp_path, tiny_study):
    folder = tmp_path / "store"
    folder.mkdir()
    url = make_store(folder)
    db = folder / "mfha.db"
    trials_before, before = snapshot(url), digest(db)
    cli = lock(db, file=True, directory=False)
    line = one_line(cli("run", "--study", str(tiny_study()), "--storage", url, "--no-progress"))
    assert line == (
        f"error: the storage file '{db}' is read-only; make it writable, or pass --storage with a URL of a file you can write."
    )
    assert digest(db) == before
    assert snapshot(url) == trials_before


# --- a store damaged by a crash ------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_store_is_one_line_naming_the_file_and_the_fix(damage, tmp_path, tiny_study):
    folder = tmp_path / "store"
    folder.mkdir()
    db = Path(make_store(folder).removeprefix("sqlite:///"))
    data = db.read_bytes()
    page = 4096
    assert len(data) > 12 * page
    if damage == "truncated":  # a copy cut short, or a disk that filled up mid-write
        db.write_bytes(data[: len(data) // 2])
    else:  # torn pages: the file's header and size intact, its middle overwritten
        db.write_bytes(data[: 3 * page] + os.urandom(6 * page) + data[9 * page :])
    url = f"sqlite:///{db}"
    before, files = digest(db), sorted(p.name for p in folder.iterdir())
    expected = (
        f"error: --storage='{url}' names the SQLite file '{db}', which is damaged (database disk image is malformed), "
        f"as a crash or a full disk can leave it; restore it from a backup, or salvage what is left with "
        f"`sqlite3 {db} .recover | sqlite3 {folder}/mfha-recovered.db` and pass --storage sqlite:///{folder}/mfha-recovered.db."
    )
    commands = [["show", "--study", "keep"], ["studies"]]
    if damage == "garbage":
        commands.append(["run", "--study", str(tiny_study()), "--no-progress"])
    for args in commands:
        assert one_line(run_search(*args, "--storage", url, timeout=120)) == expected, args
    assert digest(db) == before
    assert sorted(p.name for p in folder.iterdir()) == files


@pytest.mark.postgres
def test_a_reader_creates_no_tables_in_an_empty_postgres_database():
    """The same promise on a server: `show` on a database without Optuna's tables leaves it empty."""
    import uuid

    import psycopg

    from tests.conftest import PG_ADMIN_DSN

    name = f"mfha_empty_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
            line = one_line(run_search("show", "--study", "keep", "--storage", url, timeout=120))
            assert line == (
                f"error: --storage='{url}' names the database, which holds no Optuna study store (it has no tables); "
                f"pass --storage with the URL the study was run with."
            )
            with psycopg.connect(PG_ADMIN_DSN.replace("dbname=postgres", f"dbname={name}")) as conn:
                tables = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
            assert tables == []
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
