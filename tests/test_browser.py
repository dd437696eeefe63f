"""The dashboard as a person sees it: `run_search.py dashboard` on a finished study, opened in headless
Chromium (Debian's, driven by Playwright). The study page lists the trials and draws the
intermediate-value chart; a trial's page lists its artifacts. Screenshots land in the test's tmp folder."""
import re
import subprocess
import sys

import pytest

from tests._cli import REPO, free_port, run_search, trials, wait_for

pytestmark = pytest.mark.slow


def test_study_trials_chart_and_artifacts_in_chromium(tmp_path, tiny_study, browser):
    url = f"sqlite:///{tmp_path}/mfha.db"
    proc = run_search("run", "--study", str(tiny_study("smoke", n_trials=3)), "--storage", url, "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    n = len(trials(url, "smoke"))
    port = free_port()
    server = subprocess.Popen([sys.executable, "run_search.py", "dashboard", "--storage", url, "--port", str(port)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    page = browser
    base = f"http://127.0.0.1:{port}/dashboard"
    try:
        wait_for("the dashboard", lambda: _answers(f"http://127.0.0.1:{port}/api/studies"), timeout=60, procs=(server,))
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
    finally:
        server.terminate()
        server.wait(20)
    assert (tmp_path / "study.png").stat().st_size > 10_000 and (tmp_path / "trial.png").stat().st_size > 10_000


def _answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except OSError:
        return False
