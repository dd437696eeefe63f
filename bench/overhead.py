"""Search overhead: a trial's time outside training, and TPE's suggestion time at 1,000 trials.

    python bench/overhead.py [--trials 6] [--fill 1000] [--quick]

1. Runs the smoke study (batch size fixed at 16, so every trial trains) on a fresh SQLite store, and
   each trial's training again in this warm process, half of the repeats before the study and half
   after (this VM's speed drifts by tens of percent between minutes; the mean of both cancels a
   steady drift): overhead_share = (loop wall - reference training) / loop wall. Sampling, storage
   writes, the forecast, the trial process's start and data load, one-off costs inside its first
   steps, the waits for pruning decisions, artifact uploads and the loss-curve PNG all count as
   overhead. outside_train_share = (loop wall - the trial processes' own time inside train(), less
   their waits for the study process) / loop wall: the same without the trial processes' one-off
   costs, and without drift, as both sides come from the same run.
2. Fills a SQLite store with 1,000 finished smoke-space trials (params, intermediate values and the
   user attrs a real trial carries) and times ask + suggest with the smoke study's TPE sampler
   (bench/storage_load.py's fill and measurement).

Last line: {"bench": "overhead", "overhead_share": x, "suggest_s_at_1000": y}
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATASET = str(ROOT.parent / "shared/data/tinystories")
SMOKE = ROOT / "studies" / "smoke.toml"


def trial_overhead(n_trials: int, folder: Path) -> dict:
    import optuna
    import torch

    from search import load_study_file, run_study

    config = load_study_file(SMOKE).with_overrides(
        dataset=DATASET, storage=f"sqlite:///{folder}/overhead.db", n_trials=n_trials
    )
    config = replace(config, name="overhead", space=replace(config.space, batch_size=(16,)), timeout_s=None)
    torch.set_num_threads(config.threads or torch.get_num_threads())
    # the trials' configurations, from a dry run of the same seeded study (the sampler does not look
    # at results before its startup trials, and the smoke study's TPE starts after 5)
    dry = replace(config, name="overhead-configs", storage=f"sqlite:///{folder}/configs.db")
    run_study(dry, progress=False, log=lambda msg: None)
    dry_study = optuna.load_study(study_name=dry.name, storage=dry.storage)
    before = _reference(dry_study)
    summary = run_study(config, progress=False, log=lambda msg: None)
    loop = summary.timings["optimize_s"]
    study = optuna.load_study(study_name="overhead", storage=config.storage)
    if _trainings(study) != _trainings(dry_study):
        raise SystemExit(
            "the dry run trained other configurations than the measured one; the reference would not match"
        )
    after = _reference(study)
    reference = (before + after) / 2
    return {
        "trials": summary.new_trials,
        "loop_s": round(loop, 2),
        "train_s_in_trials": round(summary.train_s, 2),
        "train_s_reference_before": round(before, 2),
        "train_s_reference_after": round(after, 2),
        "train_s_reference": round(reference, 2),
        "overhead_s_per_trial": round((loop - reference) / summary.new_trials, 3),
        "overhead_share": round((loop - reference) / loop, 4),
        "outside_train_s_per_trial": round((loop - summary.train_s) / summary.new_trials, 3),
        "outside_train_share": round((loop - summary.train_s) / loop, 4),
        "prepare_s": round(summary.timings["prepare_s"], 2),
    }


def _trained(study) -> list:
    """The trials that trained their own configuration (not pruned before allocation, not reused)."""
    return [t for t in study.trials if t.user_attrs.get("allocated") and "reused_from" not in t.user_attrs]


def _trainings(study) -> list[tuple]:
    return [(t.user_attrs["config_key"], t.user_attrs["steps"]) for t in _trained(study)]


def _reference(study) -> float:
    """The trainings of `study`'s trials, once each, in this process (warmed up by one first)."""
    from mfha.config import ModelConfig, TrainConfig
    from mfha.data import load_data
    from mfha.train import train

    trained = _trained(study)
    total, data = 0.0, None
    for i, t in enumerate([trained[0]] + trained):
        tc = TrainConfig.from_dict({**t.user_attrs["train_config"], "max_steps": t.user_attrs["steps"]})
        data = data or load_data(tc)
        t0 = time.perf_counter()
        train(ModelConfig.from_dict(t.user_attrs["model_config"]), tc, data=data)
        if i:  # the first run only warms this process up
            total += time.perf_counter() - t0
    return total


def suggest_time(n_fill: int, folder: Path, repeats: int = 5) -> dict:
    """The storage bench's fill and suggestion measurement, on one SQLite store."""
    import optuna
    from storage_load import fill
    from storage_load import suggest_time as suggest_times

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{folder}/suggest.db"
    fill_s = fill(url, n_fill)
    times = suggest_times(url, repeats)
    return {
        "finished_trials": n_fill,
        "fill_s": round(fill_s, 1),
        "suggest_s": [round(x, 3) for x in times],
        "suggest_s_median": round(statistics.median(times), 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=6, help="smoke trials for the overhead share")
    p.add_argument("--fill", type=int, default=1000, help="finished trials in storage for the suggestion time")
    p.add_argument("--quick", action="store_true", help="3 trials and 200 stored trials: a smoke test of this bench")
    args = p.parse_args()
    if args.quick:
        args.trials, args.fill = 3, 200
    with tempfile.TemporaryDirectory() as tmp:
        over = trial_overhead(args.trials, Path(tmp))
        print(json.dumps({"part": "trial_overhead", **over}), flush=True)
        sug = suggest_time(args.fill, Path(tmp))
        print(json.dumps({"part": "suggestion", **sug}), flush=True)
    print(f"{'measure':<36} {'value':>10}")
    for label, value in (
        ("smoke trials", over["trials"]),
        ("study loop wall s", over["loop_s"]),
        ("same trainings in one warm process s", over["train_s_reference"]),
        ("overhead per trial s", over["overhead_s_per_trial"]),
        ("overhead share (target < 2%)", f"{over['overhead_share']:.2%}"),
        ("outside train() per trial s", over["outside_train_s_per_trial"]),
        ("outside train() share", f"{over['outside_train_share']:.2%}"),
        (f"TPE suggest s at {args.fill} (target < 0.5)", sug["suggest_s_median"]),
    ):
        print(f"{label:<36} {value:>10}")
    print(
        json.dumps(
            {
                "bench": "overhead",
                "overhead_share": over["overhead_share"],
                f"suggest_s_at_{args.fill}": sug["suggest_s_median"],
            }
        )
    )


if __name__ == "__main__":
    main()
