"""What loss pruning buys: one fixed CPU study run with pruning off, then on.

    python bench/search_efficiency.py [--trials 16] [--steps 400] [--pruner successive_halving] [--reduction-factor 4] [--quick]

Both runs see the same sequence of configurations (a seeded random sampler, whose draws do not
depend on results), so the comparison isolates the pruner: training steps spent (pruned / unpruned)
and the best validation bits/char (relative gap). The study is the smoke study with its batch size
fixed at 16, so no trial is pruned for memory.

Last line: {"bench": "search_efficiency", "steps_ratio": x, "best_gap": y}
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


def run(pruner: str, *, trials: int, steps: int, folder: Path, seed: int, reduction_factor: int = 4) -> dict:
    import optuna

    from search import BaselinesConfig, SamplerConfig, load_study_file, run_study

    base = load_study_file(SMOKE)
    config = replace(
        base.with_overrides(dataset=DATASET, storage=f"sqlite:///{folder}/efficiency.db", n_trials=trials),
        name=f"efficiency-{pruner}",
        timeout_s=None,
        space=replace(base.space, batch_size=(16,)),
        # character models sit on the unigram plateau (~4.4 bits/char) for their first ~60 steps, where
        # every curve looks alike: the first pruning decision comes at a fifth of the run
        # counted in steps (batch fixed, so steps are tokens), without baselines, which the pruner spares
        training={**base.training, "max_steps": steps, "eval_interval": steps // 10, "warmup_steps": 10},
        tokens=None,
        eval_tokens=None,
        warmup_tokens=None,
        baselines=BaselinesConfig(enabled=False),
        pruning=replace(
            base.pruning,
            pruner=pruner,
            warmup_steps=steps // 5,
            min_resource=steps // 5,
            reduction_factor=reduction_factor,
            percentile=25.0,
        ),
        sampler=SamplerConfig(kind="random", seed=seed),
    )
    t0 = time.perf_counter()
    summary = run_study(config, progress=False, log=lambda msg: None)
    wall = time.perf_counter() - t0
    study = optuna.load_study(study_name=config.name, storage=config.storage)
    done = [t for t in study.get_trials(deepcopy=False) if "reused_from" not in t.user_attrs]
    spent = sum(t.user_attrs.get("steps", 0) for t in done)
    return {
        "configs": [t.user_attrs.get("config_key") for t in sorted(study.trials, key=lambda t: t.number)],
        "pruner": pruner,
        "trials": len(study.trials),
        "complete": summary.counts["COMPLETE"],
        "pruned": summary.counts["PRUNED"],
        "steps": spent,
        "best_val_bpc": round(summary.best_value, 4),
        "best_trial": summary.best_number,
        "wall_s": round(wall, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--steps", type=int, default=400, help="training steps per trial (evaluated every steps/10)")
    p.add_argument(
        "--pruner", default="successive_halving", help="the pruner of the 'on' run (a study-file pruner name)"
    )
    p.add_argument(
        "--reduction-factor", type=int, default=4, help="successive halving / hyperband: keep 1 in this many per rung"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="6 trials of 100 steps: a smoke test of this bench")
    args = p.parse_args()
    if args.quick:
        args.trials, args.steps = 6, 160
    with tempfile.TemporaryDirectory() as tmp:
        off = run("none", trials=args.trials, steps=args.steps, folder=Path(tmp), seed=args.seed)
        print(json.dumps({k: v for k, v in off.items() if k != "configs"}), flush=True)
        on = run(
            args.pruner,
            trials=args.trials,
            steps=args.steps,
            folder=Path(tmp),
            seed=args.seed,
            reduction_factor=args.reduction_factor,
        )
        print(json.dumps({k: v for k, v in on.items() if k != "configs"}), flush=True)
    if on["configs"] != off["configs"]:
        raise SystemExit("the two runs saw different configurations; the comparison would not isolate the pruner")
    steps_ratio = on["steps"] / off["steps"]
    best_gap = (on["best_val_bpc"] - off["best_val_bpc"]) / off["best_val_bpc"]
    print(
        f"{'pruner':<20} {'trials':>6} {'complete':>8} {'pruned':>6} {'steps':>7} {'best val_bpc':>12} {'best trial':>10} {'wall_s':>7}"
    )
    for r in (off, on):
        print(
            f"{r['pruner']:<20} {r['trials']:>6} {r['complete']:>8} {r['pruned']:>6} {r['steps']:>7} "
            f"{r['best_val_bpc']:>12.4f} {r['best_trial']:>10} {r['wall_s']:>7.1f}"
        )
    print(f"steps {steps_ratio:.1%} of unpruned (target <= 50%), best gap {best_gap:+.2%} (target <= 2%)")
    print(
        json.dumps({"bench": "search_efficiency", "steps_ratio": round(steps_ratio, 3), "best_gap": round(best_gap, 4)})
    )


if __name__ == "__main__":
    main()
