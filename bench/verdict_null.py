"""The twin verdict under the null: how often it claims a winner when mixing head sizes does nothing.

Every configuration has the same true bits/char. A draw: 4 mixed candidates get a search value each
(the search's seed), the best of them is fixed as the verdict's mixed configuration (the selection the
product makes, before validation), and it is retrained with its 2 uniform twins on the same fresh
seeds. A seed moves all three alike (its shared effect) plus noise of its own per run. The verdict is
`search.results.stats.twin_verdict`: "mixed" only if mixed beats every twin (intersection-union),
"plain" if some twin beats mixed at Bonferroni-corrected confidence. Beside it, for contrast, the
comparison the report made before twins: the best of the 4 mixed candidates' validated means against
one plain configuration, Welch, on the very seeds that picked the best.

    python bench/verdict_null.py            # 20,000 draws
    python bench/verdict_null.py --quick    # 2,000 draws (a smoke run)

Last line: {"bench": "verdict_null", "mixed_wins_rate": x, "plain_wins_rate": y, ...}
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search.results.stats import difference_interval, twin_verdict

TARGET = 0.025  # each one-sided false claim at 95% two-sided confidence


def draw(rng: random.Random, *, candidates: int, twins: int, seeds: int, seed_sd: float, run_sd: float) -> tuple:
    """One study under the null: the product's twin verdict branch, and the old best-vs-best claim."""
    true = 1.5
    search = [true + rng.gauss(0, seed_sd) + rng.gauss(0, run_sd) for _ in range(candidates)]
    chosen = min(range(candidates), key=search.__getitem__)  # fixed before validation, as the product does
    shared = [rng.gauss(0, seed_sd) for _ in range(seeds)]
    runs = {c: [true + shared[s] + rng.gauss(0, run_sd) for s in range(seeds)] for c in range(candidates)}
    twin_runs = {size: [true + shared[s] + rng.gauss(0, run_sd) for s in range(seeds)] for size in range(twins)}
    branch = twin_verdict(runs[chosen], twin_runs)["branch"]
    # before twins: the best validated mixed mean (chosen on these seeds) against one plain configuration
    best = min(runs.values(), key=lambda v: sum(v))
    old = difference_interval(best, twin_runs[0])
    return branch, old.high < 0, old.low > 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draws", type=int, default=20_000)
    ap.add_argument("--quick", action="store_true", help="2,000 draws")
    ap.add_argument("--candidates", type=int, default=4, help="mixed candidates the verdict's config is picked from")
    ap.add_argument("--twins", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=3, help="validation seeds (the product's default)")
    ap.add_argument("--seed-sd", type=float, default=0.03, help="bits/char a seed moves every run by (shared)")
    ap.add_argument("--run-sd", type=float, default=0.02, help="bits/char of each run's own noise")
    ap.add_argument("--rng", type=int, default=0)
    args = ap.parse_args()
    n = 2_000 if args.quick else args.draws
    if n < 1 or args.candidates < 1 or args.twins < 1 or args.seeds < 2:
        ap.error("--draws, --candidates and --twins must be positive and --seeds at least 2")
    rng = random.Random(args.rng)
    t0 = time.perf_counter()
    counts = {"mixed": 0, "plain": 0, "none": 0, "no_noise": 0}
    old_mixed = old_plain = 0
    for _ in range(n):
        branch, om, op = draw(
            rng,
            candidates=args.candidates,
            twins=args.twins,
            seeds=args.seeds,
            seed_sd=args.seed_sd,
            run_sd=args.run_sd,
        )
        counts[branch] += 1
        old_mixed += om
        old_plain += op
    rates = {k: v / n for k, v in counts.items()}
    error = math.sqrt(TARGET * (1 - TARGET) / n)  # the simulation's standard error at the target rate
    limit = TARGET + 2 * error
    print(f"{n:,} draws under the null: {args.candidates} mixed candidates, {args.twins} twins, {args.seeds} seeds")
    print(f"{'claim':<44} {'rate':>8} {'target':>10}")
    for label, rate in (
        ("twin verdict: mixed wins", rates["mixed"]),
        ("twin verdict: plain wins", rates["plain"]),
        ("twin verdict: no verdict", rates["none"]),
        ("before twins: best mixed beats plain", old_mixed / n),
        ("before twins: plain beats best mixed", old_plain / n),
    ):
        target = f"<= {limit:.4f}" if label.endswith("wins") else ""
        print(f"{label:<44} {rate:>8.4f} {target:>10}")
    met = rates["mixed"] <= limit and rates["plain"] <= limit
    print(f"target (each false claim <= {TARGET} + 2 x {error:.4f} simulation error): {'met' if met else 'MISSED'}")
    print(f"{time.perf_counter() - t0:.1f} s")
    result = {
        "bench": "verdict_null",
        "draws": n,
        "mixed_wins_rate": round(rates["mixed"], 5),
        "plain_wins_rate": round(rates["plain"], 5),
        "no_verdict_rate": round(rates["none"], 5),
        "old_mixed_wins_rate": round(old_mixed / n, 5),
        "old_plain_wins_rate": round(old_plain / n, 5),
        "limit": round(limit, 5),
        "met": met,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
