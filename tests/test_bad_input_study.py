"""Nothing lost, nothing mixed (the study side): a changed study file, an interrupted validation's
queue, a foreign report folder, reserved names and odd study files, through the real CLI. Each
mistake is one stderr line (every line counted), exit 1, and the store trial-for-trial unchanged."""

import hashlib
import os
import re
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search import SearchSpace, enqueue_validation, load_study_file, stored_config
from search.run.prepare import time_note
from search.study.trials import validation_key
from tests._cli import run_search, trials
from tests.conftest import write_tiny_study

pytestmark = pytest.mark.slow


def one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr[-3000:]
    return lines[0]


def snapshot(url: str, name: str) -> list:
    return [(t.number, t.state, t.params, t.values, t.user_attrs) for t in trials(url, name)]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def searched(tmp_path_factory, tinystories):
    """A tiny study searched once (3 trials) in its own SQLite store."""
    folder = tmp_path_factory.mktemp("searched")
    path = write_tiny_study(folder, tinystories, "kept", n_trials=3)
    url = f"sqlite:///{folder}/mfha.db"
    proc = run_search("run", "--study", str(path), "--storage", url, "--no-progress", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"folder": folder, "path": path, "url": url, "dataset": tinystories}


def test_a_resumed_study_with_another_budget_is_refused(searched, tmp_path):
    changed = tmp_path / "kept.toml"
    text = searched["path"].read_text()
    changed.write_text(re.sub(r"params = [\d_]+", "params = 20_000", text, count=1))
    before = snapshot(searched["url"], "kept")
    line = one_line(run_search("run", "--study", str(changed), "--storage", searched["url"], "--no-progress"))
    assert re.search(r"was made with budget\.params=\d+, but this run has budget\.params=20000", line), line
    assert "new study.name" in line and "--study-file" in line
    assert snapshot(searched["url"], "kept") == before


def test_a_resumed_study_on_other_data_is_refused_and_a_copy_elsewhere_is_not(searched, tmp_path):
    copy = tmp_path / "data"
    copy.mkdir()
    for f in Path(searched["dataset"]).iterdir():
        if f.is_file():
            (copy / f.name).write_bytes(f.read_bytes())
    before = snapshot(searched["url"], "kept")
    finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials(searched["url"], "kept"))
    # the same files in another folder (another machine's copy): the same study
    args = ("run", "--study", str(searched["path"]), "--storage", searched["url"], "--n-trials", str(finished))
    same = run_search(*args, "--dataset", str(copy), "--no-progress", timeout=600)
    assert same.returncode == 0, same.stderr[-3000:]
    assert snapshot(searched["url"], "kept") == before
    # another slice of the stories: refused
    train = copy / "train.jsonl"
    train.write_text("".join(train.read_text().splitlines(keepends=True)[:50]))
    line = one_line(run_search(*args, "--dataset", str(copy), "--no-progress"))
    assert "data.dataset='local files" in line and "(--dataset)" in line, line
    assert snapshot(searched["url"], "kept") == before


def test_a_change_that_does_not_change_a_trial_is_said_and_accepted(searched, tmp_path):
    changed = tmp_path / "kept.toml"
    changed.write_text(searched["path"].read_text().replace("n_trials = 3", "n_trials = 4"))
    proc = run_search("run", "--study", str(changed), "--storage", searched["url"], "--no-progress", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "study file changed since the study was made: study.n_trials; accepted" in proc.stderr
    assert sum(t.state == TrialState.COMPLETE for t in trials(searched["url"], "kept")) >= 3


def test_show_study_file_prints_the_file_that_resumes_the_study(searched, tmp_path):
    proc = run_search("show", "--study", "kept", "--storage", searched["url"], "--study-file")
    assert proc.returncode == 0, proc.stderr
    saved = tmp_path / "kept.toml"
    saved.write_text(proc.stdout)
    assert load_study_file(saved).name == "kept"
    again = run_search("run", "--study", str(saved), "--storage", searched["url"], "--no-progress", timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]


def _validation_keys(url: str, name: str, state: TrialState) -> list:
    return sorted(validation_key(t.user_attrs) for t in trials(url, f"{name}.validation") if t.state == state)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_later_validate_trains_exactly_its_own_pairs(backend, searched, request, tmp_path, tinystories):
    """An earlier, larger request's queue (left by Ctrl-C) never decides what a later request trains."""
    if backend == "sqlite":
        url, name = searched["url"], "kept"
    else:
        url, name = request.getfixturevalue("postgres_url"), "kept_pg"
        path = write_tiny_study(tmp_path, tinystories, name, n_trials=3)
        proc = run_search("run", "--study", str(path), "--storage", url, "--no-progress", timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    # what `validate --top 1 --seeds 20` leaves queued when it is stopped before its first trial
    enqueue_validation(stored_config(url, name), top=1, seeds=20, log=lambda msg: None)
    queued = _validation_keys(url, name, TrialState.WAITING)
    proc = run_search("validate", "--study", name, "--storage", url, "--top", "1", "--seeds", "2", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = _validation_keys(url, name, TrialState.COMPLETE)
    sources = sorted({k[0] for k in queued})
    seeds = sorted({k[1] for k in queued})[:2]
    assert done == sorted((s, seed, None, None) for s in sources for seed in seeds)
    assert _validation_keys(url, name, TrialState.WAITING) == []
    closed = [t for t in trials(url, f"{name}.validation") if t.state == TrialState.FAIL]
    assert len(closed) == len(queued) - len(done)
    assert all(t.user_attrs["fail_reason"].startswith("superseded") for t in closed)
    assert re.search(
        r"= \d+ pairs; \d+ done or under way, \d+ to queue; \d+ queued by an earlier request that this one", proc.stderr
    )


def test_validate_refuses_more_than_100_seeds(searched):
    names = optuna.get_all_study_names(searched["url"])
    before = [snapshot(searched["url"], name) for name in names]
    line = one_line(run_search("validate", "--study", "kept", "--storage", searched["url"], "--seeds", "1000000"))
    assert "--seeds must be at most 100" in line
    assert optuna.get_all_study_names(searched["url"]) == names
    assert [snapshot(searched["url"], name) for name in names] == before


def test_report_refuses_a_folder_of_the_users_files_and_replaces_an_earlier_report(searched, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "index.html").write_text("<p>my page</p>")
    (mine / "summary.md").write_text("my notes")
    sums = {p.name: digest(p) for p in mine.iterdir()}
    line = one_line(run_search("report", "--study", "kept", "--storage", searched["url"], "--out", str(mine)))
    assert "--out must be a new or empty folder or an earlier report" in line and "index.html" in line
    assert {p.name: digest(p) for p in mine.iterdir()} == sums
    earlier = tmp_path / "earlier"
    for _ in range(2):  # the second writes over the first's report
        proc = run_search("report", "--study", "kept", "--storage", searched["url"], "--out", str(earlier))
        assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in earlier.iterdir()) == ["index.html", "report.json", "summary.md"]


def test_report_on_a_study_without_a_complete_trial_says_nothing_on_stderr(tmp_path):
    url = f"sqlite:///{tmp_path}/p.db"
    study = optuna.create_study(study_name="p", storage=url)
    for _ in range(3):
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        trial.report(1.0, 1)
        study.tell(trial, state=TrialState.PRUNED)
    proc = run_search("report", "--study", "p", "--storage", url, "--out", str(tmp_path / "r"))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_run_refuses_an_empty_storage_flag(tiny_study, tmp_path):
    path = tiny_study()
    line = one_line(run_search("run", "--study", str(path), "--storage", "", "--no-progress"))
    assert "--storage is empty" in line and "MFHA_STORAGE" in line


def test_a_study_name_ending_in_validation_is_reserved(tiny_study, tmp_path):
    path = tiny_study("smoke.validation")
    url = f"sqlite:///{tmp_path}/mfha.db"
    line = one_line(run_search("run", "--study", str(path), "--storage", url, "--no-progress"))
    assert "study.name must not end in '.validation'" in line
    assert not (tmp_path / "mfha.db").exists()


def test_a_failed_run_leaves_no_empty_store(tiny_study, tmp_path):
    path = tiny_study()
    url = f"sqlite:///{tmp_path}/new/mfha.db"
    one_line(run_search("run", "--study", str(path), "--storage", url, "--dataset", str(tmp_path / "nowhere")))
    assert not (tmp_path / "new" / "mfha.db").exists()


def test_a_study_file_that_is_a_folder_and_one_with_a_bom(tiny_study, tmp_path):
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    line = one_line(run_search("run", "--study", str(folder)))
    assert "is a folder; pass the path of a .toml file in it" in line
    path = tiny_study()
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # as some Windows editors save it
    assert load_study_file(path).name == "tiny"


@pytest.mark.skipif(
    os.geteuid() != 0, reason="as another user a chmod 000 file is simply unreadable; here root drops its override"
)
def test_an_unreadable_study_file_is_one_line(tiny_study):
    path = tiny_study()
    path.chmod(0o000)
    # root reads any file; without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH it meets the permissions as a user would
    drop = "-dac_override,-dac_read_search"
    proc = subprocess.run(
        [
            "setpriv",
            f"--inh-caps={drop}",
            f"--bounding-set={drop}",
            "python",
            "run_search.py",
            "run",
            "--study",
            str(path),
        ],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "cannot be read (permission denied); check its permissions" in one_line(proc)


def test_a_huge_token_budget_is_said_with_its_time(tiny_study, tinystories):
    path = tiny_study()
    text = re.sub(r"max_steps = \d+\n", "tokens = 1_000_000_000_000\n", path.read_text())
    path.write_text(text.replace("eval_interval = 10\n", ""))
    config = load_study_file(path)
    space = SearchSpace(config, {None: 100})
    note = time_note(config, space, "cpu")
    assert note is not None and note.startswith("warning: training.tokens=1,000,000,000,000 per trial takes about")
    assert "days" in note and "tokens/s" in note


def test_validate_help_shows_a_plain_percent_sign():
    proc = run_search("validate", "--help")
    assert proc.returncode == 0 and "95%" in proc.stdout and "%%" not in proc.stdout


def test_device_cuda_without_cuda_names_the_flag(tiny_study):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    line = one_line(run_search("run", "--study", str(tiny_study()), "--device", "cuda", "--no-progress"))
    assert line.startswith("error: --device cuda, but no CUDA device is available")


def test_export_of_a_study_that_run_did_not_make_is_one_line(tmp_path):
    url = f"sqlite:///{tmp_path}/plain.db"
    optuna.create_study(study_name="plain", storage=url).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    before = digest(tmp_path / "plain.db")
    line = one_line(run_search("export", "--study", "plain", "--storage", url, "--out", str(tmp_path / "out")))
    assert "holds no model_config (the study was not made by run_search.py run)" in line
    assert not (tmp_path / "out").exists() and digest(tmp_path / "plain.db") == before
