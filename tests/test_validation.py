"""Trustworthy winners through the real CLI: token budgets, baselines, validation with fresh seeds,
export and show of the validated winner, and a validation killed with kill -9 that resumes."""

import json
import re

import optuna
import pytest
from optuna.trial import TrialState

from tests._cli import REPO, kill_group, run_search, start, trials, wait_for
from tests.conftest import write_tiny_study

pytestmark = pytest.mark.slow
SEARCH_SEED = 1337  # TrainConfig's default seed, which the tiny study keeps


def token_study(folder, dataset, name: str, *, tokens: int, eval_tokens: int, n_trials: int, extra: str = ""):
    """The tiny study of tests/conftest.py with a token budget in place of its step count."""
    path = write_tiny_study(folder, dataset, name, n_trials=n_trials, extra=extra)
    text = re.sub(r"max_steps = \d+\n", f"tokens = {tokens}\neval_tokens = {eval_tokens}\n", path.read_text())
    path.write_text(text.replace("eval_interval = 10\n", ""))
    return path


# batch 16 and 64 at seq_len 32: 512 and 2,048 tokens a step; a percentile pruner that prunes almost
# anything behind the best, to show that it spares the baselines
EXTRA = """
[baselines]
params = [{ family = "uniform", uniform_n = 2, uniform_size = 8, batch_size = 64 }]

[validation]
top = 1
seeds = 2
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory, tinystories):
    folder = tmp_path_factory.mktemp("validation")
    path = token_study(folder, tinystories, "val", tokens=16_384, eval_tokens=4_096, n_trials=8, extra=EXTRA)
    text = path.read_text().replace("batch_size = [8]", "batch_size = [16, 64]").replace("size = [8]", "size = [8, 16]")
    path.write_text(text.replace('pruner = "none"', 'pruner = "percentile"\npercentile = 1.0\nstartup_trials = 0'))
    url = f"sqlite:///{folder}/mfha.db"
    proc = run_search("run", "--study", str(path), "--storage", url, "--no-progress", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {
        "url": url,
        "proc": proc,
        "folder": folder,
        "search": trials(url, "val"),
        "validation": trials(url, "val.validation"),
    }


def test_token_budget_gives_batch_16_and_64_the_same_tokens_and_report_steps(study):
    done = [t for t in study["search"] if t.state == TrialState.COMPLETE]
    by_batch = {t.user_attrs["train_config"]["batch_size"]: t for t in done}
    assert set(by_batch) == {16, 64}, [(t.number, t.user_attrs["train_config"]["batch_size"]) for t in done]
    small, big = by_batch[16], by_batch[64]
    assert small.user_attrs["steps"] == 4 * big.user_attrs["steps"] == 32
    for t, per_step in ((small, 16 * 32), (big, 64 * 32)):
        assert abs(t.user_attrs["tokens"] - 16_384) < per_step
    assert sorted(small.intermediate_values) == sorted(big.intermediate_values) == [4_096, 8_192, 12_288, 16_384]
    assert optuna.load_study(study_name="val", storage=study["url"]).user_attrs["step_unit"] == "tokens"


def test_baselines_run_first_marked_and_never_pruned_for_loss(study):
    ts = study["search"]
    baselines = [t for t in ts if t.user_attrs.get("role") == "baseline"]
    # one per uniform size of the space (8, 16), then the study file's own
    assert [t.number for t in baselines] == [0, 1, 2]
    assert all(t.state == TrialState.COMPLETE for t in baselines)
    assert [t.user_attrs["family"] for t in baselines] == ["uniform"] * 3
    assert {t.params["uniform_size"] for t in baselines[:2]} == {8, 16}
    # the pruner was active: trials that are not baselines were pruned for loss
    assert any(t.user_attrs.get("prune_kind") == "loss" for t in ts if t.user_attrs.get("role") != "baseline")


def test_validation_retrains_each_pick_with_fresh_seeds(study):
    v = study["validation"]
    selection = optuna.load_study(study_name="val.validation", storage=study["url"]).user_attrs["selection"]
    picks = {s["source_trial"] for s in selection}
    assert "top 1" in selection[0]["why"] and any("best baseline" in s["why"] for s in selection)
    complete = [t for t in v if t.state == TrialState.COMPLETE]
    assert len(complete) == len(picks) * 2 and not [t for t in v if t.state != TrialState.COMPLETE]
    assert {(t.user_attrs["source_trial"], t.user_attrs["seed"]) for t in complete} == {
        (p, s) for p in picks for s in (1, 2)
    }
    for t in complete:
        assert t.user_attrs["train_config"]["seed"] == t.user_attrs["seed"] != SEARCH_SEED
        assert sorted(t.intermediate_values) == [4_096, 8_192, 12_288, 16_384]
    assert "validated (mean val_bpc ± 95% interval over fresh seeds):" in study["proc"].stdout


def test_export_takes_the_validated_winner_and_says_so(study, tmp_path):
    means = {}
    for t in study["validation"]:
        means.setdefault(t.user_attrs["source_trial"], []).append(t.value)
    winner = min(means, key=lambda k: (sum(means[k]) / len(means[k]), k))
    proc = run_search("export", "--study", "val", "--storage", study["url"], "--out", str(tmp_path / "e"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"exported trial {winner} (validated winner: val_bpc ")
    record = json.loads((tmp_path / "e" / "trial.json").read_text())
    assert record["number"] == winner and record["validation"]["seeds"] == [1, 2]
    assert record["validation"]["mean"] == pytest.approx(sum(means[winner]) / 2)
    assert record["validation"]["low"] < record["validation"]["mean"] < record["validation"]["high"]


def test_show_has_the_validated_column(study):
    proc = run_search("show", "--study", "val", "--storage", study["url"], "--top", "20")
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.splitlines()
    assert "validated" in header.split() and "role" in header.split()
    picks = {t.user_attrs["source_trial"] for t in study["validation"]}
    shown = [r for r in rows if re.search(r"\d\.\d{4} ± \d\.\d{4} \(2\)", r)]
    assert len(shown) == len(picks)


def test_validate_input_mistakes_are_one_line(study):
    proc = run_search("validate", "--study", "vla", "--storage", study["url"])
    assert (
        proc.returncode == 1
        and proc.stderr.strip() == f"error: --study 'vla' is not in {study['url']}; did you mean 'val'?"
    )
    proc = run_search("validate", "--study", "val", "--storage", study["url"], "--seeds", "1")
    assert proc.returncode == 1
    assert (
        proc.stderr.strip() == "error: --seeds must be an integer >= 2 (an interval needs two seeds), but got seeds=1."
    )


def _kill_validation_halfway_then_resume(url: str, path, name: str) -> None:
    proc = run_search("run", "--study", str(path), "--storage", url, "--no-progress", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    args = ("validate", "--study", name, "--storage", url, "--top", "1", "--seeds", "3", "--no-progress")
    victim = start(*args)
    vname = f"{name}.validation"
    try:

        def halfway():
            ts = trials(url, vname)
            running = [t for t in ts if t.state == TrialState.RUNNING and t.intermediate_values]
            return running if sum(t.state == TrialState.COMPLETE for t in ts) >= 1 else None

        killed = wait_for("a validation trial to train after one completed", halfway, procs=(victim,), poll=0.1)[0]
        kill_group(victim)  # the validate process, its forkserver and its trial process, as a crash would
        victim.wait(30)
    finally:
        kill_group(victim)
    assert [t.state for t in trials(url, vname) if t.number == killed.number] == [TrialState.RUNNING]
    again = run_search(*args, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    ts = trials(url, vname)
    selection = optuna.load_study(study_name=vname, storage=url).user_attrs["selection"]
    complete = [t for t in ts if t.state == TrialState.COMPLETE]
    assert len(complete) == len(selection) * 3, [(t.number, t.state.name, t.user_attrs.get("seed")) for t in ts]
    assert len({(t.user_attrs["source_trial"], t.user_attrs["seed"]) for t in complete}) == len(complete)
    assert not [t for t in ts if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert [t.state for t in ts if t.number == killed.number] == [TrialState.FAIL]


def _long_study(folder, dataset, name):
    # a uniform-only space with one head size: one baseline, and trials of about two seconds
    return token_study(folder, dataset, name, tokens=80_000, eval_tokens=16_000, n_trials=2)


def test_validation_killed_halfway_resumes_to_exactly_k_times_n_on_sqlite(tmp_path, tinystories):
    _kill_validation_halfway_then_resume(
        f"sqlite:///{tmp_path}/mfha.db", _long_study(tmp_path, tinystories, "kill"), "kill"
    )


@pytest.mark.postgres
def test_validation_killed_halfway_resumes_to_exactly_k_times_n_on_postgres(postgres_url, tmp_path, tinystories):
    _kill_validation_halfway_then_resume(postgres_url, _long_study(tmp_path, tinystories, "killpg"), "killpg")


def test_workers_run_search_then_validation(tmp_path, tinystories):
    url = f"sqlite:///{tmp_path}/mfha.db"
    path = token_study(
        tmp_path,
        tinystories,
        "two",
        tokens=8_192,
        eval_tokens=2_048,
        n_trials=4,
        extra="\n[validation]\ntop = 2\nseeds = 2\n",
    )
    proc = run_search("run", "--study", str(path), "--storage", url, "--workers", "2", "--no-progress", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        proc.stderr.count("validation 'two.validation':") == 3
    )  # the supervisor enqueues; each worker finds it all queued
    selection = optuna.load_study(study_name="two.validation", storage=url).user_attrs["selection"]
    v = trials(url, "two.validation")
    assert sum(t.state == TrialState.COMPLETE for t in v) == len(selection) * 2 == len(v)
    assert len({t.user_attrs["worker"] for t in v}) == 2
    assert "validated (mean val_bpc" in proc.stdout and str(REPO) not in proc.stdout


def test_run_no_validation_skips_the_study_files_validation(tmp_path, tinystories):
    path = write_tiny_study(tmp_path, tinystories, "quick", n_trials=2, extra="\n[validation]\ntop = 1\nseeds = 2\n")
    url = f"sqlite:///{tmp_path}/mfha.db"
    proc = run_search("run", "--study", str(path), "--storage", url, "--no-progress", "--no-validation", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert optuna.get_all_study_names(url) == ["quick"]
    assert "next: python run_search.py export --study quick" in proc.stdout
