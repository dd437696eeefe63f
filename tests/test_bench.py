import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_attention_bench_quick_prints_the_json_line():
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "attention.py"), "--quick", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert any("mfha_fractal" in line and "1x32 2x16 4x8" in line for line in lines)
    result = json.loads(lines[-1])
    assert set(result) == {"bench", "device", "ratio_vs_mha", "speedup_vs_seed_loop"}
    assert result["bench"] == "attention" and result["device"] in ("cpu", "cuda")
    assert result["ratio_vs_mha"] > 0 and result["speedup_vs_seed_loop"] > 0


def _quick(script: str) -> tuple[list[str], dict]:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--quick"], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    return lines, json.loads(lines[-1])


@pytest.mark.slow
def test_search_efficiency_bench_quick_compares_the_same_configurations(tinystories):
    lines, result = _quick("search_efficiency.py")
    runs = [json.loads(line) for line in lines if line.startswith('{"pruner')]
    off, on = runs
    assert off["pruner"] == "none" and off["pruned"] == 0 and off["trials"] == on["trials"] == 6
    assert set(result) == {"bench", "steps_ratio", "best_gap"} and result["bench"] == "search_efficiency"
    assert result["steps_ratio"] == round(on["steps"] / off["steps"], 3) and 0 < result["steps_ratio"] <= 1


@pytest.mark.slow
def test_overhead_bench_quick_measures_both_parts(tinystories):
    lines, result = _quick("overhead.py")
    parts = {p["part"]: p for p in map(json.loads, (line for line in lines if line.startswith('{"part')))}
    assert parts["trial_overhead"]["trials"] == 3 and parts["trial_overhead"]["train_s_reference"] > 0
    assert len(parts["suggestion"]["suggest_s"]) == 5 and parts["suggestion"]["finished_trials"] == 200
    assert result == {
        "bench": "overhead",
        "overhead_share": parts["trial_overhead"]["overhead_share"],
        "suggest_s_at_200": parts["suggestion"]["suggest_s_median"],
    }


@pytest.mark.slow
def test_winners_curse_bench_quick_checks_the_winner_on_unseen_seeds(tinystories):
    lines, result = _quick("winners_curse.py")
    assert set(result) == {
        "bench",
        "best_search_value",
        "best_search_validated_mean",
        "winner",
        "winner_low",
        "winner_high",
        "further_mean",
        "inside",
    }
    assert result["winner_low"] < result["winner_high"]
    assert result["inside"] == (result["winner_low"] <= result["further_mean"] <= result["winner_high"])
    assert any(line.startswith("validated winner") for line in lines)


@pytest.mark.slow
def test_cost_stability_bench_quick_measures_three_runs_and_a_rank(tinystories):
    lines, result = _quick("cost_stability.py")
    assert len(result["ratios"]) == len(result["tokens_per_s"]) == len(result["loads"]) == 3
    for values, spread in (
        (result["ratios"], result["ratio_spread"]),
        (result["tokens_per_s"], result["tokens_per_s_spread"]),
    ):
        median = sorted(values)[1]
        assert spread == round(max(abs(v / median - 1) for v in values), 4)
    assert [r["config"] for r in result["rank"]] == ["uniform-1L", "uniform-2L", "uniform-6L"]
    assert all(r["train_cost"] > 0 and r["train_wall_s"] > 0 for r in result["rank"])
    assert -1 <= result["rank_spearman"] <= 1
    assert any(line.startswith("| 2 CPU burners beside |") for line in lines)


def test_verdict_null_bench_quick_reports_both_false_claim_rates():
    lines, result = _quick("verdict_null.py")
    assert result["bench"] == "verdict_null" and result["draws"] == 2_000
    assert 0 <= result["mixed_wins_rate"] <= 1 and 0 <= result["plain_wins_rate"] <= 1
    rates = result["mixed_wins_rate"] + result["plain_wins_rate"] + result["no_verdict_rate"]
    assert rates <= 1 + 1e-9
    assert any(line.startswith("twin verdict: mixed wins") for line in lines)


@pytest.mark.slow
def test_twins_bench_quick_pairs_a_mix_with_twins_of_equal_parameters(tinystories):
    lines, result = _quick("twins.py")
    assert result["bench"] == "twins" and len(result["pairs"]) == 2
    assert all(p["low"] <= p["diff"] <= p["high"] and p["cost_ratio"] > 0 for p in result["pairs"])
    rows = [line for line in lines if line.startswith("| mixed") or line.startswith("| twin")]
    assert len({row.split("|")[3] for row in rows}) == 1  # one parameter count for the mix and its twins
