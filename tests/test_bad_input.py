"""Each user mistake through the real CLI: one `error:` line naming the flag or key and the fix, a
non-zero exit, no traceback, and the study already in the store untouched. README.md's table of
bad inputs quotes these messages."""

import json
import os
import re
import shutil
import subprocess

import optuna
import pytest
from optuna.trial import TrialState

from search import make_storage
from tests._cli import run_search, trials

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store holding a finished study that no bad input may touch."""
    folder = tmp_path_factory.mktemp("store")
    url = f"sqlite:///{folder}/mfha.db"
    study = optuna.create_study(study_name="keep", storage=make_storage(url))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    return url


def snapshot(url: str) -> list:
    return [(t.number, t.state, t.params, t.value) for t in trials(url, "keep")]


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    # every stderr line counts: the error is the only thing the user sees
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr[-3000:]
    return lines[0]


def study_file(tiny_study, old: str = "", new: str = "", **kw):
    path = tiny_study(**kw)
    text = path.read_text()
    if old:
        assert old in text, old
        path.write_text(text.replace(old, new))
    return path


# (id, how the study file changes (old, new), extra flags, the message as a regex)
STUDY_FILE_CASES = [
    ("unknown key", ("depth =", "dept ="), [], r"unknown key 'space\.dept'; did you mean 'space\.depth'\?"),
    (
        "unknown head family",
        ('families = ["uniform"]', 'families = ["unifrom"]'),
        [],
        r"space\.families must list head families from uniform, fractal, geometric, explicit, but got 'unifrom'; did you mean 'uniform'\?",
    ),
    (
        "odd head size",
        ("size = [8]", "size = [7]"),
        [],
        r"space\.uniform: the combination n=1, size=7 is not a valid head set \(every head size must be an even integer >= 4",
    ),
    (
        "too-small head size",
        ("size = [8]", "size = [2]"),
        [],
        r"space\.uniform: the combination n=1, size=2 is not a valid head set \(every head size must be an even integer >= 4",
    ),
    (
        "budget smaller than the embedding",
        ("params = 8_000", "params = 300"),
        [],
        r"budget\.params=300 \(band up to 390\) is smaller than the embedding alone \(vocab \d+ x narrowest width 8 = \d+\); raise budget\.params or lower space\.width",
    ),
    (
        "RAM limit below the smallest model",
        ('ram_limit = "4 GiB"', 'ram_limit = "100 MB"'),
        [],
        r"pruning\.ram_limit=95 MiB is below the smallest model in the space \(forecast \d+ MiB, framework \d+ MiB\); raise pruning\.ram_limit",
    ),
    (
        "vocab the corpus cannot support",
        ('tokenizer_vocab = "char"', "tokenizer_vocab = 20000"),
        [],
        r"data\.tokenizer_vocab=20000 is more than the training slice supports \(the tokenizer stopped at \d+ tokens\); lower data\.tokenizer_vocab or raise data\.max_train_stories",
    ),
    (
        "grace period not above the heartbeat",
        ("grace_period_s = 3", "grace_period_s = 1"),
        [],
        r"study\.grace_period_s must be a whole number of seconds > study\.heartbeat_interval_s=1, but got study\.grace_period_s=1\.",
    ),
    (
        "malformed storage URL",
        None,
        ["--storage", "postgresql+psycopg//bob:hunter2@localhost/db"],
        r"--storage must be an SQLAlchemy URL like sqlite:///storage/mfha\.db or postgresql\+psycopg://USER:PASS@HOST/DB, but got --storage='postgresql\+psycopg//bob:\*\*\*@localhost/db'\.",
    ),
    (
        "unreachable database",
        None,
        ["--storage", "postgresql+psycopg://bob:hunter2@127.0.0.1:1/db"],
        r"cannot reach the database --storage='postgresql\+psycopg://bob:\*\*\*@127\.0\.0\.1:1/db': .*",
    ),
    (
        "Hub unreachable",
        None,
        ["--dataset", "roneneldan/TinyStories"],
        r"cannot reach the Hugging Face Hub for --dataset roneneldan/TinyStories; .*--dataset",
    ),
    (
        "steps beside a token budget",
        ("max_steps = 30", "max_steps = 30\ntokens = 4096"),
        [],
        r"training\.max_steps counts steps, but training\.tokens sets a token budget \(steps follow from each trial's batch size\); use training\.tokens, or remove training\.tokens\.",
    ),
    (
        "objectives not led by val_bpc",
        ("[study]\n", '[study]\nobjectives = ["train_cost"]\n'),
        [],
        r"study.objectives must be \['val_bpc'\] followed by any of 'train_cost', 'decode_cost', but got study.objectives=\['train_cost'\]\.",
    ),
    ("worker count", None, ["--workers", "0"], r"--workers must be a positive integer, but got workers=0\."),
    ("trial count", None, ["--n-trials", "0"], r"--n-trials must be a positive integer, but got n_trials=0\."),
]


@pytest.mark.parametrize(
    "change,flags,message", [c[1:] for c in STUDY_FILE_CASES], ids=[c[0] for c in STUDY_FILE_CASES]
)
def test_bad_study_or_flag(change, flags, message, tiny_study, store):
    before = snapshot(store)
    path = study_file(tiny_study, *(change or ()))
    storage = [] if "--storage" in flags else ["--storage", store]
    line = one_error_line(run_search("run", "--study", str(path), *storage, *flags, "--no-progress"))
    assert re.search(message, line), line
    assert "hunter2" not in line
    assert snapshot(store) == before


def test_missing_study_file(store):
    line = one_error_line(run_search("run", "--study", "studies/smoek.toml", "--storage", store))
    assert line == "error: study file 'studies/smoek.toml' does not exist; did you mean 'studies/smoke.toml'?"


def test_malformed_study_file(tmp_path, store):
    bad = tmp_path / "bad.toml"
    bad.write_text('[study]\nname = "x\n')
    line = one_error_line(run_search("run", "--study", str(bad), "--storage", store))
    assert re.fullmatch(
        rf"error: study file '{re.escape(str(bad))}' is not valid TOML: .*\(at line 2, column \d+\)\.", line
    ), line


def test_dataset_path_missing(tiny_study, store, tmp_path):
    line = one_error_line(
        run_search("run", "--study", str(tiny_study()), "--storage", store, "--dataset", str(tmp_path / "nope"))
    )
    assert re.search(r"--dataset '.*nope' .*(does not exist|neither a local path)", line), line


def test_unknown_study_name_in_show(store):
    line = one_error_line(run_search("show", "--study", "kepe", "--storage", store))
    assert line == f"error: --study 'kepe' is not in {store}; did you mean 'keep'?"


def test_too_few_validation_seeds(store):
    line = one_error_line(run_search("validate", "--study", "keep", "--storage", store, "--seeds", "1"))
    assert line == "error: --seeds must be an integer >= 2 (an interval needs two seeds), but got seeds=1."


def test_validating_a_study_that_run_did_not_make(store):
    line = one_error_line(run_search("validate", "--study", "keep", "--storage", store))
    assert (
        line == "error: study 'keep' holds no study file (it was not created by run_search.py run); validate needs one."
    )


def test_storage_folder_not_writable(tiny_study, tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    url = f"sqlite:///{folder}/mfha.db"
    optuna.create_study(study_name="keep", storage=make_storage(url)).optimize(
        lambda t: t.suggest_float("x", 0, 1), n_trials=2
    )
    before = snapshot(url)
    # root writes through permission bits, so as root the folder is made immutable instead
    lock, unlock = (["chattr", "+i", str(folder)], ["chattr", "-i", str(folder)]) if os.geteuid() == 0 else (None, None)
    if lock and not shutil.which("chattr"):
        pytest.skip("running as root without chattr: no way to make a folder unwritable")
    try:
        if lock:
            subprocess.run(lock, check=True)
        else:
            folder.chmod(0o500)
        line = one_error_line(run_search("run", "--study", str(tiny_study()), "--storage", url))
    finally:
        if unlock:
            subprocess.run(unlock, check=True)
        folder.chmod(0o700)
    assert (
        line
        == f"error: the storage folder '{folder}' is not writable; pass --storage with a URL in a folder you can write."
    )
    assert snapshot(url) == before


def test_storage_file_that_is_not_sqlite(tiny_study, tmp_path):
    db = tmp_path / "some.db"
    junk = os.urandom(4096)
    db.write_bytes(junk)
    url = f"sqlite:///{db}"
    for args in (["run", "--study", str(tiny_study())], ["show", "--study", "keep"]):
        line = one_error_line(run_search(*args, "--storage", url))
        assert line == (
            f"error: --storage must name a SQLite database or a new file, but got --storage='{url}', whose file '{db}' "
            f"SQLite cannot read (file is not a database); pass --storage with another file name, or move that file away."
        ), line
    assert db.read_bytes() == junk and sorted(p.name for p in tmp_path.iterdir()) == ["some.db", "tiny.toml"]


def exportable_store(folder) -> str:
    """A store whose study 'exp' has one COMPLETE trial carrying the configs an export writes out."""
    from mfha import ModelConfig, TrainConfig

    url = f"sqlite:///{folder}/exp.db"

    def objective(trial):
        trial.set_user_attr("model_config", ModelConfig().to_dict())
        trial.set_user_attr("train_config", TrainConfig().to_dict())
        return trial.suggest_float("x", 0, 1)

    optuna.create_study(study_name="exp", storage=make_storage(url)).optimize(objective, n_trials=1)
    return url


def test_export_into_a_folder_of_other_files_is_refused_and_an_earlier_export_replaced(store, tmp_path):
    before = snapshot(store)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes\n")
    line = one_error_line(run_search("export", "--study", "keep", "--storage", store, "--out", str(out)))
    assert line == (
        f"error: --out must be a new or empty folder or an earlier export (one with its trial.json), but got "
        f"--out '{out}', which holds notes.txt; pass --out with another folder."
    ), line
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "my notes\n"
    assert snapshot(store) == before
    url = exportable_store(tmp_path)
    first = run_search("export", "--study", "exp", "--storage", url, "--out", str(tmp_path / "exp"))
    assert first.returncode == 0 and "replaced" not in first.stdout, first.stderr[-3000:]
    again = run_search("export", "--study", "exp", "--storage", url, "--out", str(tmp_path / "exp"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert (
        "  replaced:            the earlier export of trial 0 of study 'exp' in that folder"
        in again.stdout.splitlines()
    ), again.stdout
    assert json.loads((tmp_path / "exp" / "trial.json").read_text())["number"] == 0


def test_a_diverging_learning_rate_prunes_that_trial_and_the_study_goes_on(tiny_study, tmp_path):
    path = study_file(tiny_study, "lr = { min = 1e-3, max = 1e-2 }", "lr = [3e-3, 1e4]", n_trials=4)
    url = f"sqlite:///{tmp_path}/mfha.db"
    proc = run_search("run", "--study", str(path), "--storage", url, "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-6000:]
    ts = trials(url, "tiny")
    diverged = [t for t in ts if t.state == TrialState.PRUNED and t.user_attrs.get("prune_kind") == "diverged"]
    assert diverged and all(t.params["lr"] == 1e4 for t in diverged)
    assert re.match(
        r"diverged: training loss became (nan|inf|\d[\d.e+]*) by step \d+ \(lr=[^)]+\); lower --lr / lr or raise warmup_steps\.",
        diverged[0].user_attrs["prune_reason"],
    )
    assert any(t.state == TrialState.COMPLETE for t in ts)
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in ts) == 4
