"""`run_search.py report` on a real tiny multi-objective study (val_bpc and train_cost), searched and
validated once for the module: its Pareto front is Optuna's, its validated costs are plain means over
the validation trials, the page draws the front with both objectives on its axes, and the summary
states the cost beside the verdict."""

import math
import re
import statistics

import optuna
import pytest
from optuna.trial import TrialState
from scipy import stats

from tests.conftest import write_tiny_study
from tests.test_report import FRACTAL, search_validate_report

pytestmark = pytest.mark.slow
OBJECTIVES = ("val_bpc", "train_cost")


@pytest.fixture(scope="module")
def reported(tmp_path_factory, tinystories):
    folder = tmp_path_factory.mktemp("report-pareto")
    study = write_tiny_study(
        folder, tinystories, "tiny", n_trials=6, families=("uniform", "fractal"), extra=FRACTAL, objectives=OBJECTIVES
    )
    return search_validate_report(folder, study)


def test_pareto_trials_are_optunas_best_trials(reported):
    search = optuna.load_study(study_name="tiny", storage=reported.url)
    front = {t.number: t.values for t in search.best_trials}
    assert front and reported.facts["objectives"] == list(OBJECTIVES)
    assert {p["trial"] for p in reported.facts["pareto"]} == set(front)
    table = reported.summary.split("## Quality against cost: the Pareto front")[1].split("## ")[0]
    for p in reported.facts["pareto"]:
        assert [p["values"][name] for name in OBJECTIVES] == pytest.approx(front[p["trial"]], rel=1e-12), p
        row = next(x for x in table.splitlines() if x.startswith(f"| {p['trial']} | {p['heads']}"))
        assert row.endswith(f" | {front[p['trial']][0]:.4f} | {front[p['trial']][1]:.3f} |"), row


def test_validated_costs_are_plain_means_over_the_validation_trials(reported):
    validation = optuna.load_study(study_name="tiny.validation", storage=reported.url)
    first = {}  # per configuration and seed, the first COMPLETE trial (as validated() counts them)
    for t in sorted(validation.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.number):
        first.setdefault((t.user_attrs["source_trial"], t.user_attrs["seed"]), t)
    expected = {}
    for source in {s for s, _ in first}:
        costs = [t.values[1] for (s, _), t in first.items() if s == source]
        mean = statistics.fmean(costs)
        half = stats.t.ppf(0.975, len(costs) - 1) * statistics.stdev(costs) / math.sqrt(len(costs))
        expected[source] = (mean, mean - half, mean + half)
    facts = reported.facts
    assert {r["source_trial"] for r in facts["validated"]} == set(expected)
    for r in facts["validated"]:
        c = r["costs"]["train_cost"]
        assert (c["mean"], c["low"], c["high"]) == pytest.approx(expected[r["source_trial"]], rel=1e-9), r
    for family in facts["families"]:
        if family["validated_trial"] is not None:
            assert family["costs"]["train_cost"]["validated"]["mean"] == pytest.approx(
                expected[family["validated_trial"]][0], rel=1e-9
            )
    v = facts["verdict"]
    for side in ("mixed", "uniform"):
        assert v["costs"]["train_cost"][side]["mean"] == pytest.approx(expected[v[side]["source_trial"]][0], rel=1e-9)


def test_page_draws_the_pareto_front_with_both_objectives_on_its_axes(reported, browser):
    page = browser
    page.goto((reported.out / "index.html").as_uri())
    img = page.locator("#chart-pareto img")
    # the alt text is read off the axes Optuna drew (ax.get_xlabel(), ax.get_ylabel())
    assert img.get_attribute("alt") == "Pareto front (x: val_bpc, y: train_cost)"
    assert img.get_attribute("src").startswith("data:image/png;base64,")
    assert img.evaluate("i => i.complete ? i.naturalWidth : 0") > 0
    assert "by val_bpc and train_cost" in page.locator("#chart-pareto figcaption").inner_text()
    page.screenshot(path=str(reported.out / "screenshot.png"), full_page=True)


def test_summary_states_the_cost_beside_the_verdict(reported):
    v = reported.facts["verdict"]
    cost = v["costs"]["train_cost"]
    assert v["status"] in ("mixed", "uniform", "indistinguishable") and "train_cost" not in v["sentence"]
    assert v["cost_sentence"].startswith(
        "On train_cost (ratio to the fixed reference model's seconds per token; lower is faster"
    )
    assert f"mixed minus uniform is {cost['difference']:+.3f}" in v["cost_sentence"]
    assert {"mixed": "entirely below 0", "uniform": "entirely above 0", "indistinguishable": "which includes 0"}[
        cost["status"]
    ] in v["cost_sentence"]
    assert (
        f"{v['sentence']} {v['cost_sentence']}" in reported.summary
    )  # one paragraph, the cost after the val_bpc verdict
    assert f"{v['sentence']} {v['cost_sentence']}" in reported.stdout
    header = next(
        x for x in reported.summary.splitlines() if x.startswith("| search trial | heads | family | mixed sizes")
    )
    assert "| val_bpc mean ± 95% | train_cost mean ± 95% |" in header
    assert re.search(
        r"^\| search trial \| heads \| family \| val_bpc \| train_cost \|$", reported.summary, re.M
    )  # the Pareto front's table
