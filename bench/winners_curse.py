"""The winner's curse, measured: how far the search's best value flatters its trial, and whether the
validated interval holds for seeds that validation never saw.

    python bench/winners_curse.py [--top 3] [--seeds 3] [--further 3] [--quick]

1. Runs the smoke study (token budget, baselines) on a fresh store and validates it (`--top`
   best distinct configurations and the best of every family, `--seeds` fresh seeds each).
2. Prints the best search trial's value beside its validated mean, and the validated winner with its
   95% interval (the figures `report` and `export` show).
3. Retrains the validated winner with `--further` seeds that neither the search nor validation used,
   exactly as its trials trained (same configs, same thread count), and checks that their mean falls
   inside the interval.

Last line: {"bench": "winners_curse", "best_search_value": ..., "best_search_validated_mean": ...,
"winner": ..., "winner_low": ..., "winner_high": ..., "further_mean": ..., "inside": ...}
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATASET = str(ROOT.parent / "shared/data/tinystories")
SMOKE = ROOT / "studies" / "smoke.toml"


def retrain(source, seeds: list[int]) -> list[float]:
    """Final val_bpc of the source trial's configuration trained once per seed, as its trial trained."""
    import torch

    from mfha import ModelConfig, TrainConfig
    from mfha.train import train

    torch.set_num_threads(source.user_attrs["threads"])
    mc = ModelConfig.from_dict(source.user_attrs["model_config"])
    out = []
    for seed in seeds:
        tc = TrainConfig.from_dict({**source.user_attrs["train_config"], "seed": seed})
        out.append(train(mc, tc).metrics["val_bpc"])
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--top", type=int, default=3)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--further", type=int, default=3, help="seeds for the out-of-sample check")
    p.add_argument("--trials", type=int, default=12)
    p.add_argument(
        "--quick", action="store_true", help="6 trials, top 1, 2 seeds, 2 further: a smoke test of this bench"
    )
    args = p.parse_args()
    if args.quick:
        args.trials, args.top, args.seeds, args.further = 6, 1, 2, 2

    import optuna

    from search import load_study_file, run_study, run_validation, validated, validation_seeds
    from search.results.stats import mean_interval

    quiet = lambda msg: None
    with tempfile.TemporaryDirectory() as folder:
        config = load_study_file(SMOKE).with_overrides(
            dataset=DATASET, storage=f"sqlite:///{folder}/curse.db", n_trials=args.trials
        )
        config = replace(config, timeout_s=None)
        t0 = time.perf_counter()
        run_study(config, progress=False, log=quiet)
        t_search = time.perf_counter() - t0
        run_validation(config, top=args.top, seeds=args.seeds, progress=False, log=quiet)
        t_validation = time.perf_counter() - t0 - t_search
        search = optuna.load_study(study_name=config.name, storage=config.storage)
        validation = optuna.load_study(study_name=config.name + ".validation", storage=config.storage)
        rows = validated(search, validation)
        best = min(
            (
                t
                for t in search.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if "reused_from" not in t.user_attrs
            ),
            key=lambda t: (t.value, t.number),
        )
        best_row = next(r for r in rows if r.source_trial == best.number)
        winner = rows[0]
        # seeds after validation's: never seen by the search or by validation
        further_seeds = validation_seeds(search, args.seeds + args.further)[args.seeds :]
        t1 = time.perf_counter()
        further = retrain(search.trials[winner.source_trial], further_seeds)
        t_further = time.perf_counter() - t1
        further_mean = sum(further) / len(further)
        inside = winner.interval.low <= further_mean <= winner.interval.high

        print(
            f"search: {len(search.trials)} trials in {t_search:.0f} s; validation: {len(rows)} configurations x "
            f"{args.seeds} seeds in {t_validation:.0f} s; further seeds {further_seeds} in {t_further:.0f} s"
        )
        print(f"{'':28}{'trial':>6} {'heads':>22} {'search':>8} {'validated mean ± 95%':>24}")
        for label, r in (("best search trial", best_row), ("validated winner", winner)):
            print(f"{label:28}{r.source_trial:>6} {r.heads:>22} {r.search_value:>8.4f} {r.interval.text():>24}")
        print(f"{'validation ranking':28}" + ", ".join(f"trial {r.source_trial} {r.mean:.4f}" for r in rows))
        check = mean_interval(further)
        print(
            f"winner retrained with further seeds {further_seeds}: {', '.join(f'{v:.4f}' for v in further)} "
            f"-> mean {check.mean:.4f}, {'inside' if inside else 'OUTSIDE'} the validated interval "
            f"[{winner.interval.low:.4f}, {winner.interval.high:.4f}]"
        )
        print(
            json.dumps(
                {
                    "bench": "winners_curse",
                    "best_search_value": round(best.value, 4),
                    "best_search_validated_mean": round(best_row.mean, 4),
                    "winner": winner.source_trial,
                    "winner_low": round(winner.interval.low, 4),
                    "winner_high": round(winner.interval.high, 4),
                    "further_mean": round(further_mean, 4),
                    "inside": inside,
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
