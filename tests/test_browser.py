"""The dashboard as a person sees it: `run_search.py dashboard` on a finished study, opened in headless
Chromium (Debian's, driven by Playwright). The study page lists the trials and draws the
intermediate-value chart; a trial's page lists its artifacts; a multi-objective study's page draws
its Pareto front with the objectives named. Screenshots land in the test's tmp folder."""

import re
import subprocess
import sys
from contextlib import contextmanager

import optuna
import pytest

from tests._cli import REPO, free_port, run_search, trials, wait_for

pytestmark = pytest.mark.slow


def test_study_trials_chart_and_artifacts_in_chromium(tmp_path, tiny_study, browser):
    url = f"sqlite:///{tmp_path}/mfha.db"
    proc = run_search("run", "--study", str(tiny_study("smoke", n_trials=3)), "--storage", url, "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    n = len(trials(url, "smoke"))
    page = browser
    with _dashboard(url) as base:
        page.goto(base)
        page.get_by_text(re.compile(r"^\d+\. smoke$")).click()  # the study's card on the home page
        chart = page.locator("#graph-intermediate-values")
        chart.locator("svg.main-svg g.trace").first.wait_for(timeout=30_000)
        assert chart.locator("g.scatterlayer g.trace").count() == n  # one line per trial
        for i in range(n):
            assert chart.get_by_text(f"trial #{i}", exact=True).count() == 1  # the legend
        page.screenshot(path=str(tmp_path / "study.png"), full_page=True)
        # the objective is named (study.set_metric_names), not "Objective 0"
        page.get_by_text("val_bpc").first.wait_for(timeout=30_000)
        assert page.get_by_text("Objective 0").count() == 0

        page.goto(page.url.rstrip("/") + "/trials")
        page.get_by_text(f"{n} Trials", exact=True).wait_for(timeout=30_000)
        for i in range(n):
            assert page.get_by_text(f"Trial {i}", exact=True).count() == 1
        page.get_by_text("Trial 1", exact=True).click()
        page.get_by_role("heading", name="Trial 1 (trial_id=2)").wait_for(timeout=30_000)
        page.get_by_text("Artifacts", exact=True).wait_for(timeout=30_000)
        for name in ("model_config.json", "train_config.json", "metrics.csv"):
            assert page.get_by_text(name, exact=True).count() == 1, name
        assert page.locator('img[alt="loss_curve.png"]').count() == 1
        page.get_by_text("metrics.csv", exact=True).scroll_into_view_if_needed()  # the trial pane scrolls on its own
        page.screenshot(path=str(tmp_path / "trial.png"))
    assert (tmp_path / "study.png").stat().st_size > 10_000 and (tmp_path / "trial.png").stat().st_size > 10_000


def test_pareto_front_of_a_multi_objective_study_in_chromium(tmp_path, tiny_study, browser):
    url = f"sqlite:///{tmp_path}/mfha.db"
    proc = run_search(
        "run",
        "--study",
        str(tiny_study("pareto", n_trials=4, objectives=("val_bpc", "train_cost"))),
        "--storage",
        url,
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="pareto", storage=url)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    front = sorted((t.values[0], t.values[1]) for t in study.best_trials)
    page = browser
    with _dashboard(url) as base:
        page.goto(base)
        page.get_by_text(re.compile(r"^\d+\. pareto$")).click()
        chart = page.locator("#graph-pareto-front")
        chart.locator("svg.main-svg g.trace").first.wait_for(timeout=30_000)
        assert chart.locator("g.scatterlayer path.point").count() == len(complete)  # one marker per COMPLETE trial
        # the markers drawn as "Best Trial" (plotly keeps the drawn data on the chart's element) are Optuna's best_trials
        best = chart.evaluate(
            "e => e.data.filter(t => t.hovertemplate.includes('>Best Trial<')).flatMap(t => t.x.map((x, i) => [x, t.y[i]]))"
        )
        assert sorted(map(tuple, best)) == front
        # this dashboard's Pareto chart names its axes in the two pickers beside it (its plot has no axis titles)
        for picker, name in (("Objective X:", "val_bpc"), ("Objective Y:", "train_cost")):
            field = page.locator("fieldset", has=page.get_by_text(picker, exact=True))
            assert field.get_by_role("combobox").inner_text() == name, picker
        for unnamed in ("Objective 0", "Objective 1"):
            assert page.get_by_text(unnamed).count() == 0, unnamed
        page.screenshot(path=str(tmp_path / "pareto.png"), full_page=True)
    assert (tmp_path / "pareto.png").stat().st_size > 10_000


@contextmanager
def _dashboard(url: str):
    """`run_search.py dashboard` on `url`, answering; yields its home page's address."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "run_search.py", "dashboard", "--storage", url, "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for("the dashboard", lambda: _answers(f"http://127.0.0.1:{port}/api/studies"), timeout=60, procs=(server,))
        yield f"http://127.0.0.1:{port}/dashboard"
    finally:
        server.terminate()
        server.wait(20)


def _answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except OSError:
        return False
