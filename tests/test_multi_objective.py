"""Quality against speed through the real CLI: a study minimizing val_bpc and train_cost, lagging-loss
pruning on the bits/char curve, validation of both objectives, and export of the Pareto front or of
the best trial under a cost limit."""

import json
import re

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from search.run.runner import name_objective
from tests._cli import run_search, trials
from tests.test_validation import token_study

pytestmark = pytest.mark.slow

EXTRA = """
[cost]
seconds = 0.2

[validation]
top = 1
seeds = 2
families = false
"""


@pytest.fixture(scope="module")
def mo(tmp_path_factory, tinystories):
    folder = tmp_path_factory.mktemp("mo")
    path = token_study(folder, tinystories, "mo", tokens=8_192, eval_tokens=2_048, n_trials=7, extra=EXTRA)
    text = path.read_text().replace("n_trials = 7", 'n_trials = 7\nobjectives = ["val_bpc", "train_cost"]')
    # a pruner that prunes almost anything behind the best, so the run shows pruning at work; TPE past
    # its startup trials, which ranks those pruned trials by their (val_bpc) curves
    text = text.replace('pruner = "none"', 'pruner = "percentile"\npercentile = 1.0\nstartup_trials = 0')
    path.write_text(text.replace('kind = "random"', 'kind = "tpe"\nstartup_trials = 2'))
    url = f"sqlite:///{folder}/mfha.db"
    proc = run_search("run", "--study", str(path), "--storage", url, "--no-progress", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {
        "url": url,
        "path": path,
        "proc": proc,
        "folder": folder,
        "search": trials(url, "mo"),
        "validation": trials(url, "mo.validation"),
    }


def test_the_study_minimizes_both_objectives_by_name(mo):
    for name in ("mo", "mo.validation"):
        study = optuna.load_study(study_name=name, storage=mo["url"])
        assert study.directions == [optuna.study.StudyDirection.MINIMIZE] * 2
        assert study.metric_names == ["val_bpc", "train_cost"]
    assert re.search(r"best val_bpc \d\.\d{4} \(trial \d+\); \d+ trials on the Pareto front", mo["proc"].stdout), mo[
        "proc"
    ].stdout


def test_each_complete_trial_holds_its_cost_ratio_with_the_raw_speeds_beside_it(mo):
    done = [t for t in mo["search"] + mo["validation"] if t.state == TrialState.COMPLETE]
    assert len(done) >= 4
    for t in done:
        detail = t.user_attrs["train_cost_detail"]
        assert t.values[1] == t.user_attrs["train_cost"] == round(detail["ratio"], 4)
        assert detail["low"] <= detail["ratio"] <= detail["high"] and detail["rounds"] >= 5
        assert detail["model_tokens_per_s"] > 0 and detail["reference_tokens_per_s"] > 0
        assert t.values[0] == t.intermediate_values[max(t.intermediate_values)]  # the final val_bpc


def test_lagging_loss_prunes_on_the_bits_per_char_curve(mo):
    pruned = [t for t in mo["search"] if t.state == TrialState.PRUNED and t.user_attrs.get("prune_kind") == "loss"]
    assert pruned, [(t.number, t.state.name, t.user_attrs.get("prune_reason")) for t in mo["search"]]
    for t in pruned:
        assert t.values is None and "train_cost" not in t.user_attrs  # stopped before its cost was measured
        assert t.user_attrs["prune_reason"].startswith("lagging loss (percentile pruner): val_bpc")
        assert len(t.intermediate_values) < 4  # stopped before its last evaluation
    assert all(t.state == TrialState.COMPLETE for t in mo["search"] if t.user_attrs.get("role") == "baseline")
    # validation never prunes for loss, in a multi-objective study too
    assert all(t.state == TrialState.COMPLETE for t in mo["validation"])


def test_validate_prints_both_validated_means(mo):
    out = mo["proc"].stdout
    header = next(line for line in out.splitlines() if line.lstrip().startswith("rank"))
    assert "validated" in header and "train_cost" in header
    seeds = {}
    for t in mo["validation"]:
        seeds.setdefault(t.user_attrs["source_trial"], []).append(t.values[1])
    for source, costs in seeds.items():
        mean = sum(costs) / len(costs)
        row = next(line for line in out.splitlines() if re.match(rf"\s+\d+\s+{source}\s", line))
        assert f"{mean:.3f} ±" in row, (row, costs)


def test_show_has_a_column_per_cost(mo):
    proc = run_search("show", "--study", "mo", "--storage", mo["url"])
    assert proc.returncode == 0, proc.stderr
    header = proc.stdout.splitlines()[0].split()
    assert header[:6] == ["number", "state", "val_bpc", "validated", "train_cost", "validated_train_cost"], header


def test_resuming_with_other_objectives_is_one_line_and_changes_nothing(mo):
    before = [(t.number, t.state, t.values) for t in trials(mo["url"], "mo")]
    path = mo["folder"] / "mo-single.toml"
    path.write_text(
        mo["path"]
        .read_text()
        .replace('objectives = ["val_bpc", "train_cost"]\n', "")
        .replace("[cost]\nseconds = 0.2\n", "")
    )
    proc = run_search("run", "--study", str(path), "--storage", mo["url"], "--no-progress")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert (
        f"error: study 'mo' in {mo['url']} minimizes ['val_bpc', 'train_cost'], but study.objectives is ['val_bpc']; "
        "pick another study.name, or run it with the study file it was made with."
    ) in proc.stderr.splitlines()
    assert [(t.number, t.state, t.values) for t in trials(mo["url"], "mo")] == before


# (val_bpc, train_cost) of a study whose answers the tests know: trial 4 is dominated by trial 2
KNOWN = [(2.0, 3.0), (2.2, 1.0), (2.1, 2.0), (2.5, 0.5), (2.3, 2.5)]
FRONT = [0, 2, 1, 3]  # by val_bpc


@pytest.fixture(scope="module")
def known(mo):
    """A multi-objective study with set values; its trials borrow a real trial's configuration."""
    source = next(t for t in mo["search"] if t.state == TrialState.COMPLETE)
    study = optuna.create_study(study_name="known", storage=mo["url"], directions=["minimize", "minimize"])
    name_objective(study, ["val_bpc", "train_cost"])
    for bpc, cost in KNOWN:
        study.add_trial(
            create_trial(
                values=[bpc, cost],
                params={"lr": 0.01},
                distributions={"lr": FloatDistribution(1e-3, 1e-1)},
                user_attrs={**source.user_attrs, "train_cost": cost},
            )
        )
    return mo["url"]


@pytest.mark.parametrize("limit,expected", [(3.0, 0), (2.0, 2), (1.5, 1), (1.0, 1), (0.5, 3)])
def test_max_cost_exports_the_best_val_bpc_within_the_limit(known, tmp_path, limit, expected):
    out = tmp_path / "best"
    proc = run_search("export", "--study", "known", "--storage", known, "--max-cost", str(limit), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "trial.json").read_text())
    assert record["number"] == expected
    assert record["values"] == {"val_bpc": KNOWN[expected][0], "train_cost": KNOWN[expected][1]}
    assert (
        f"exported trial {expected} (val_bpc {KNOWN[expected][0]:.4f}, train_cost {KNOWN[expected][1]:.3f})"
        in proc.stdout
    )


def test_max_cost_below_every_trial_is_one_line(known, tmp_path):
    proc = run_search(
        "export", "--study", "known", "--storage", known, "--max-cost", "0.4", "--out", str(tmp_path / "x")
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        "error: no COMPLETE trial has train_cost <= 0.4 (the cheapest, trial 3, has 0.500); raise --max-cost."
    )
    assert not (tmp_path / "x").exists()


def test_pareto_writes_exactly_the_front(known, tmp_path):
    proc = run_search("export", "--study", "known", "--storage", known, "--pareto", "--out", str(tmp_path / "front"))
    assert proc.returncode == 0, proc.stderr
    folders = sorted(p.name for p in (tmp_path / "front").iterdir())
    assert folders == sorted(f"pareto{i + 1}-trial{n}" for i, n in enumerate(FRONT))
    assert {n for n in FRONT} == {t.number for t in optuna.load_study(study_name="known", storage=known).best_trials}
    for i, n in enumerate(FRONT):
        record = json.loads((tmp_path / "front" / f"pareto{i + 1}-trial{n}" / "trial.json").read_text())
        assert record["values"] == {"val_bpc": KNOWN[n][0], "train_cost": KNOWN[n][1]}
        assert (tmp_path / "front" / f"pareto{i + 1}-trial{n}" / "model_config.json").is_file()


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--pareto"], r"--pareto needs a study with a cost objective .*but study 'single' minimizes val_bpc alone"),
        (["--max-cost", "1"], r"--max-cost needs a study with a cost objective"),
        (
            ["--max-cost", "0"],
            r"--max-cost must be a positive number \(a cost ratio, 1.0 = the reference model\), but got max_cost=0.0\.",
        ),
        (
            ["--max-cost", "1", "--cost", "decode_cost"],
            r"--cost must be one of the study's costs \(train_cost\), but got --cost 'decode_cost'\.",
        ),
        (["--cost", "train_cost"], r"--cost names the cost that --max-cost limits; pass --max-cost too"),
    ],
)
def test_export_flag_mistakes_are_one_line(known, tmp_path, flags, message):
    if "single" not in optuna.get_all_study_names(known):
        optuna.create_study(study_name="single", storage=known).optimize(
            lambda t: t.suggest_float("x", 0, 1), n_trials=1
        )
    name = "single" if "needs a study" in message else "known"
    proc = run_search("export", "--study", name, "--storage", known, *flags, "--out", str(tmp_path / "x"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    line = proc.stderr.strip()
    assert line.startswith("error: ") and len(line.splitlines()) == 1 and re.search(message, line), line
