import os
import sqlite3

import optuna
import pytest

from mfha.errors import ConfigError
from search import default_artifacts_dir, make_storage, mask_url, sqlite_path


@pytest.mark.parametrize(
    "url,masked",
    [
        (
            "postgresql+psycopg://alice:s3cret@db.example:5432/mfha",
            "postgresql+psycopg://alice:***@db.example:5432/mfha",
        ),
        ("mysql://u:p%40ss@h/db", "mysql://u:***@h/db"),
        ("postgresql://alice@host/db", "postgresql://alice@host/db"),
        ("sqlite:///storage/mfha.db", "sqlite:///storage/mfha.db"),
        ("not a url user:pw@x", "not a url user:***@x"),
        ("postgresql+psycopg//bob:hunter2@localhost/db", "postgresql+psycopg//bob:***@localhost/db"),
        ("weird://u:pa:ss@h", "weird://u:***@h"),
    ],
)
def test_mask_url_hides_passwords(url, masked):
    assert mask_url(url) == masked


def test_sqlite_default_creates_folders_and_uses_wal(tmp_path):
    db = tmp_path / "deep" / "er" / "mfha.db"
    storage = make_storage(f"sqlite:///{db}")
    study = optuna.create_study(study_name="s", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert db.is_file()
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert storage.heartbeat_interval and storage.grace_period
    assert type(storage.get_heartbeat_stale_trial_callback()).__name__ == "RetryHeartbeatStaleTrialCallback"


def test_resume_loads_the_same_study(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    optuna.create_study(study_name="s", storage=make_storage(url)).optimize(
        lambda t: t.suggest_float("x", 0, 1), n_trials=1
    )
    again = optuna.create_study(study_name="s", storage=make_storage(url), load_if_exists=True)
    assert len(again.trials) == 1


def test_readers_do_not_create_a_database(tmp_path):
    with pytest.raises(ConfigError, match=r"--storage points at .*missing.db', which does not exist"):
        make_storage(f"sqlite:///{tmp_path}/missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()


def test_malformed_url_is_one_line_with_the_password_masked():
    with pytest.raises(ConfigError) as e:
        make_storage("postgresql+psycopg//bob:hunter2@localhost/db")
    assert "hunter2" not in str(e.value) and "--storage must be an SQLAlchemy URL" in str(e.value)


def test_unknown_driver():
    with pytest.raises(ConfigError, match=r"names a database driver SQLAlchemy does not know") as e:
        make_storage("nosuchdb://bob:hunter2@localhost/db")
    assert "hunter2" not in str(e.value)


def test_unreachable_database_masks_the_password():
    # nothing listens on port 1
    with pytest.raises(
        ConfigError, match=r"cannot reach the database --storage='postgresql\+psycopg://bob:\*\*\*@127.0.0.1:1/db'"
    ) as e:
        make_storage("postgresql+psycopg://bob:hunter2@127.0.0.1:1/db")
    assert "hunter2" not in str(e.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_storage_folder_not_writable(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(ConfigError, match=r"storage folder .* is not writable"):
        make_storage(f"sqlite:///{ro}/mfha.db")


def test_artifacts_sit_beside_a_sqlite_file():
    assert str(default_artifacts_dir("sqlite:///storage/mfha.db")) == "storage/artifacts"
    assert str(default_artifacts_dir("sqlite:////tmp/x/y.db")) == "/tmp/x/artifacts"
    assert str(default_artifacts_dir("postgresql://u:p@h/db")) == "storage/artifacts"
    assert sqlite_path("sqlite://") is None and sqlite_path("sqlite:///:memory:") is None
