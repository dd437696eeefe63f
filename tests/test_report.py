"""`run_search.py report` on a real tiny study, searched and validated once for the module: the page
opens offline in headless Chromium without console errors, its figures match what plain Optuna and
scipy compute from the storage, and its mistakes are one line."""

import json
import math
import re
import statistics
import subprocess
import sys
from collections import Counter
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState
from scipy import stats

from tests._cli import REPO, run_search
from tests.conftest import write_tiny_study

pytestmark = pytest.mark.slow
# a mixed-size family beside uniform, so the verdict has both sides (sizes >= 4: RoPE rotates pairs)
FRACTAL = """
[space.fractal]
base = [8]
levels = { min = 2, max = 2 }
"""


@pytest.fixture(scope="module")
def reported(tmp_path_factory, tinystories):
    folder = tmp_path_factory.mktemp("report")
    study = write_tiny_study(folder, tinystories, "tiny", n_trials=6, families=("uniform", "fractal"), extra=FRACTAL)
    return search_validate_report(folder, study)


def search_validate_report(folder, study) -> SimpleNamespace:
    """Through the CLI: run the study file `study` (study "tiny") into folder/mfha.db, validate its best
    and the verdict's two sides with 2 seeds, and report into folder/reports/tiny."""
    url = f"sqlite:///{folder}/mfha.db"
    out = folder / "reports" / "tiny"
    steps = [
        ("run", "--study", str(study), "--storage", url, "--no-progress"),
        ("validate", "--study", "tiny", "--storage", url, "--top", "1", "--seeds", "2", "--no-progress"),
        ("report", "--study", "tiny", "--storage", url, "--out", str(out)),
    ]
    for args in steps:
        proc = run_search(*args, "--artifacts", str(folder / "artifacts")) if args[0] != "report" else run_search(*args)
        assert proc.returncode == 0, (args[0], proc.stderr[-3000:])
    return SimpleNamespace(
        url=url,
        out=out,
        stdout=proc.stdout,
        facts=json.loads((out / "report.json").read_text()),
        summary=(out / "summary.md").read_text(),
        html=(out / "index.html").read_text(),
    )


def test_page_opens_offline_with_verdict_and_charts(reported, browser):
    page = browser
    errors = []
    page.on("console", lambda msg: errors.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.route(
        re.compile(r"^(?!file:|data:)"), lambda route: (errors.append(f"request: {route.request.url}"), route.abort())
    )
    page.goto((reported.out / "index.html").as_uri())
    page.wait_for_load_state("load")

    sentence = reported.facts["verdict"]["sentence"]
    assert reported.facts["verdict"]["status"] in ("mixed", "uniform", "indistinguishable"), sentence
    assert page.locator("#verdict").inner_text() == sentence
    assert sentence in reported.stdout
    loaded = page.evaluate("Array.from(document.images).map(i => [i.alt, i.complete ? i.naturalWidth : 0])")
    assert len(loaded) >= 4 and all(w > 0 for _, w in loaded), loaded
    assert all(
        img.startswith("data:image/png;base64,") for img in re.findall(r'<img[^>]* src="([^"]*)"', reported.html)
    )
    assert not re.search(r'(src|href)="(?!data:)', reported.html)  # nothing to fetch: no CDN, no external URL
    assert errors == []
    page.screenshot(path=str(reported.out / "screenshot.png"), full_page=True)


def test_figures_match_an_independent_computation(reported):
    search = optuna.load_study(study_name="tiny", storage=reported.url)
    validation = optuna.load_study(study_name="tiny.validation", storage=reported.url)
    configs = _validated(search, validation)
    facts, summary = reported.facts, reported.summary

    counts = Counter(t.state.name for t in search.trials)
    assert facts["trials"]["search"] == {
        "total": len(search.trials),
        **{s: counts[s] for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")},
    }
    assert facts["trials"]["validation"]["COMPLETE"] == len(validation.get_trials(states=(TrialState.COMPLETE,)))

    expected_rows = _family_rows(search, configs)
    assert len(facts["families"]) == len(expected_rows)
    for row in facts["families"]:
        want = expected_rows[(row["family"], row["baseline"])]
        for key in ("trials", "complete", "best_search_trial", "validated_trial", "seeds", "n_params"):
            assert row[key] == want[key], (row, key)
        for key in ("best_search_value", "mean", "low", "high", "tokens_per_s"):
            assert row[key] == (pytest.approx(want[key], rel=1e-9) if want[key] is not None else None), (row, key)
        if want["mean"] is not None:
            line = next(
                x
                for x in summary.splitlines()
                if x.startswith(f"| {row['family']}{' (baseline)' if row['baseline'] else ''} |")
            )
            assert f"{want['mean']:.4f} ± {(want['high'] - want['low']) / 2:.4f}" in line, line
            assert f"{want['best_search_value']:.4f}" in line, line

    mixed = min((c for c in configs.values() if c["mixed"]), key=lambda c: (c["mean"], c["source"]))
    uniform = min((c for c in configs.values() if not c["mixed"]), key=lambda c: (c["mean"], c["source"]))
    diff, low, high = _welch(mixed["values"], uniform["values"])
    v = facts["verdict"]
    assert (v["mixed"]["source_trial"], v["uniform"]["source_trial"]) == (mixed["source"], uniform["source"])
    assert v["mixed"]["mean"] == pytest.approx(mixed["mean"]) and v["uniform"]["mean"] == pytest.approx(uniform["mean"])
    assert (v["mixed"]["seeds"], v["uniform"]["seeds"]) == (mixed["seeds"], uniform["seeds"])
    assert (v["difference"], v["low"], v["high"]) == pytest.approx((diff, low, high), rel=1e-9)
    assert v["status"] == ("mixed" if high < 0 else "uniform" if low > 0 else "indistinguishable")
    for text in (f"{diff:+.4f} bits/char", f"{low:+.4f} to {high:+.4f}", v["sentence"]):
        assert text in summary, text


def _validated(search: optuna.Study, validation: optuna.Study) -> dict[int, dict]:
    """Per search trial: its validation values, one per seed (the first trial of a seed), mean and t-interval."""
    by_source: dict[int, dict[int, optuna.trial.FrozenTrial]] = {}
    for t in sorted(validation.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.number):
        by_source.setdefault(t.user_attrs["source_trial"], {}).setdefault(t.user_attrs["seed"], t)
    out = {}
    for source, seeds in by_source.items():
        ts = [seeds[s] for s in sorted(seeds)]
        values = [t.value for t in ts]
        mean = statistics.fmean(values)
        half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
        attrs = search.trials[source].user_attrs
        out[source] = {
            "source": source,
            "values": values,
            "seeds": sorted(seeds),
            "mean": mean,
            "low": mean - half,
            "high": mean + half,
            "mixed": _mixes_sizes(attrs["heads"]),
            "n_params": attrs["n_params"],
            "tokens_per_s": statistics.fmean(t.user_attrs["tokens_per_s"] for t in ts),
        }
    return out


def _mixes_sizes(heads: str) -> bool:
    """From the heads attr ("1x8 2x4", layers split by " | "): does some layer have two head sizes?"""
    return any(len({group.split("x")[1] for group in layer.split()}) > 1 for layer in heads.split(" | "))


def _family_rows(search: optuna.Study, configs: dict[int, dict]) -> dict[tuple[str, bool], dict]:
    rows = {}
    for key in {
        (t.user_attrs["family"], t.user_attrs.get("role") == "baseline")
        for t in search.trials
        if "family" in t.user_attrs
    }:
        ts = [t for t in search.trials if (t.user_attrs.get("family"), t.user_attrs.get("role") == "baseline") == key]
        done = [t for t in ts if t.state == TrialState.COMPLETE]
        best = min(done, key=lambda t: (t.value, t.number)) if done else None
        mine = [configs[t.number] for t in ts if t.number in configs]
        v = min(mine, key=lambda c: (c["mean"], c["source"])) if mine else None
        rows[key] = {
            "trials": len(ts),
            "complete": len(done),
            "best_search_trial": best and best.number,
            "best_search_value": best and best.value,
            "validated_trial": v and v["source"],
            "seeds": len(v["values"]) if v else 0,
            "mean": v and v["mean"],
            "low": v and v["low"],
            "high": v and v["high"],
            "n_params": v["n_params"] if v else best and best.user_attrs["n_params"],
            "tokens_per_s": v["tokens_per_s"] if v else best and best.user_attrs["tokens_per_s"],
        }
    return rows


def _welch(a: list[float], b: list[float]) -> tuple[float, float, float]:
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    diff, half = statistics.fmean(a) - statistics.fmean(b), stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    return diff, diff - half, diff + half


def test_mistakes_are_one_line(reported, tmp_path):
    unknown = run_search("report", "--study", "tiyn", "--storage", reported.url, "--out", str(tmp_path / "r"))
    assert _one_error_line(unknown) == f"error: --study 'tiyn' is not in {reported.url}; did you mean 'tiny'?"
    assert not (tmp_path / "r").exists()  # nothing written for a study that is not there
    (tmp_path / "file").write_text("")
    blocked = run_search("report", "--study", "tiny", "--storage", reported.url, "--out", str(tmp_path / "file" / "r"))
    assert (
        _one_error_line(blocked) == f"error: cannot create --out folder '{tmp_path / 'file' / 'r'}': Not a directory."
    )


def test_report_does_not_import_torch(reported, tmp_path):
    code = (
        "import sys, run_search; rc = run_search.main(sys.argv[1:]); "
        "sys.exit(rc or ('torch' in sys.modules and 'torch was imported'))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "report", "--study", "tiny", "--storage", reported.url, "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def test_a_storage_password_is_never_shown():
    from search.results.verdict import verdict

    v = verdict("s", [], None, [], storage_url="postgresql+psycopg://mfha:s3cret@db.example/mfha")
    assert (
        "s3cret" not in v["sentence"] and "--storage 'postgresql+psycopg://mfha:***@db.example/mfha'" in v["sentence"]
    )
