"""Two separate runs on one machine against one run with two workers: do separate runs share the cores?

    python bench/side_by_side.py [--trials 12] [--rounds 2] [--dataset ../shared/data/tinystories] [--as-shipped] [--all-cores] [--quick]

Each round times the same total number of smoke-study trials two ways, on one machine:
  workers:  one `run_search.py run --workers 2 --n-trials 2N` (one store);
  separate: two `run_search.py run --n-trials N` started together, each with its own store and the
            same study, which share the cores through the host slots (search/run/host.py).
The wall time is from the first start to the last exit. Rounds alternate which way goes first. Both
ways share one fresh data cache (and so one host-slot folder), filled by a one-trial warm-up run.

By default the smoke study runs with equal work per trial: batch 16 only (no trial pruned for RAM in
milliseconds), no loss pruner and no baselines. As shipped, the two ways would not train the same
amount: each separate study enqueues its own 2 baselines, which always train to the end (4 against
the workers' 2), and pruning decisions follow each store's own history. `--as-shipped` times the
study file unchanged.

The smoke study caps trials at one thread (`training.threads = 1`), so its separate runs never
compete for threads. `--all-cores` lifts the cap (`threads = 0`: each run wants every core) and adds
a third way, the two separate runs with the host slots off (`MFHA_HOST_SLOTS=0`), where each takes
every core as before.

Last line: {"bench": "side_by_side", "workers_wall_s": x, "separate_wall_s": y, "ratio": y / x, ...}
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared/data/tinystories"
SMOKE = "studies/smoke.toml"


# (text in studies/smoke.toml, its replacement): trials of equal work; every core wanted
EQUAL_WORK = [("batch_size = [16, 2048]", "batch_size = [16]"), ('pruner = "median"', 'pruner = "none"')]
ALL_CORES = [("\nthreads = 1", "\nthreads = 0")]


def derived_study(folder: Path, *, equal_work: bool, all_cores: bool) -> Path:
    text = (ROOT / SMOKE).read_text()
    for old, new in (EQUAL_WORK if equal_work else []) + (ALL_CORES if all_cores else []):
        if old not in text:
            raise SystemExit(f"{SMOKE} no longer holds {old!r}; update {Path(__file__).name}")
        text = text.replace(old, new)
    path = folder / "smoke-derived.toml"
    path.write_text(text + ("\n[baselines]\nenabled = false\n" if equal_work else ""))
    return path


def start(
    folder: Path, name: str, *extra: str, study: Path, dataset: str | None, env: dict
) -> tuple[subprocess.Popen, Path]:
    """`run_search.py run` on the smoke study into its own store; stderr goes to NAME.log."""
    log = folder / f"{name}.log"
    cmd = [
        sys.executable,
        "run_search.py",
        "run",
        "--study",
        str(study),
        "--storage",
        f"sqlite:///{folder}/{name}.db",
        "--no-progress",
        *extra,
    ]
    if dataset:
        cmd += ["--dataset", dataset]
    with open(log, "w") as err:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, env=env), log


def timed(folder: Path, runs: dict[str, tuple[str, ...]], *, study: Path, dataset: str | None, env: dict) -> dict:
    """Start every run at once and wait for all; the wall time, and each run's first line and counts."""
    t0 = time.perf_counter()
    procs = {name: start(folder, name, *extra, study=study, dataset=dataset, env=env) for name, extra in runs.items()}
    for name, (proc, log) in procs.items():
        if proc.wait() != 0:
            raise SystemExit(f"{name} exited with {proc.returncode}: {log.read_text()[-3000:]}")
    wall = time.perf_counter() - t0
    return {"wall_s": round(wall, 1), "runs": {name: _outcome(folder, name, log) for name, (_, log) in procs.items()}}


def _outcome(folder: Path, name: str, log: Path) -> dict:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{folder}/{name}.db")
    ts = study.get_trials(deepcopy=False)
    done = [t for t in ts if t.duration is not None]
    states = {s: sum(t.state.name == s for t in ts) for s in ("COMPLETE", "PRUNED", "FAIL")}
    return {
        "first_line": log.read_text().splitlines()[0],
        **{k.lower(): v for k, v in states.items()},
        "trial_s": round(sum(t.duration.total_seconds() for t in done), 1),
        "threads": sorted({t.user_attrs.get("threads") for t in done if t.user_attrs.get("threads")}),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--trials", type=int, default=12, help="trials per separate run; the --workers 2 run does twice as many"
    )
    p.add_argument("--rounds", type=int, default=2, help="rounds, alternating which way goes first")
    p.add_argument(
        "--dataset",
        default=str(SHARED) if SHARED.exists() else None,
        help="--dataset of every run (default: ../shared/data/tinystories if present, else the study's own)",
    )
    p.add_argument(
        "--as-shipped",
        action="store_true",
        help="the smoke study file unchanged (baselines, both batch sizes, median pruner)",
    )
    p.add_argument(
        "--all-cores",
        action="store_true",
        help="threads = 0 (each run wants every core), and a third way with the host slots off",
    )
    p.add_argument("--keep", metavar="DIR", help="keep the stores, logs and cache in DIR (default: a temporary folder)")
    p.add_argument("--quick", action="store_true", help="2 trials per run, one round: a smoke test of this bench")
    args = p.parse_args()
    if args.quick:
        args.trials, args.rounds = 2, 1
    load = os.getloadavg()
    print(
        f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {len(os.sched_getaffinity(0))} cores",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or scratch
        Path(tmp).mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MFHA_CACHE": str(Path(tmp) / "cache"), "HF_HUB_OFFLINE": "1"}
        study = derived_study(Path(tmp), equal_work=not args.as_shipped, all_cores=args.all_cores)
        timed(
            Path(tmp), {"warmup": ("--n-trials", "1")}, study=study, dataset=args.dataset, env=env
        )  # fills the data cache
        order = ["workers", "separate"] + (["no-slots"] if args.all_cores else [])
        for r in range(args.rounds):
            pair = ("--n-trials", str(args.trials))
            ways = {
                "workers": ({f"workers{r}": ("--workers", "2", "--n-trials", str(2 * args.trials))}, env),
                "separate": ({f"a{r}": pair, f"b{r}": pair}, env),
                "no-slots": ({f"c{r}": pair, f"d{r}": pair}, {**env, "MFHA_HOST_SLOTS": "0"}),
            }
            for way in order if r % 2 == 0 else order[::-1]:
                runs, way_env = ways[way]
                result = timed(Path(tmp), runs, study=study, dataset=args.dataset, env=way_env)
                rows.append({"round": r, "way": way, **result})
                print(json.dumps(rows[-1]), flush=True)
    walls = {way: round(sum(row["wall_s"] for row in rows if row["way"] == way), 1) for way in order}
    workers, separate = walls["workers"], walls["separate"]
    print(
        f"\n{'round':>5} {'way':<9} {'wall_s':>7} {'trials':>6} {'complete':>8} {'pruned':>6} {'trial_s':>8}  threads  first line"
    )
    for row in rows:
        for name, o in row["runs"].items():
            print(
                f"{row['round']:>5} {row['way']:<9} {row['wall_s']:>7} {o['complete'] + o['pruned']:>6} {o['complete']:>8} "
                f"{o['pruned']:>6} {o['trial_s']:>8}  {o['threads']!s:<7}  {name}: {o['first_line']}"
            )
    print(
        f"total wall: {', '.join(f'{way} {wall:.1f} s' for way, wall in walls.items())}; "
        f"ratio separate / workers {separate / workers:.3f} (target <= 1.15)"
    )
    extra = (
        {"no_slots_wall_s": walls["no-slots"], "no_slots_ratio": round(walls["no-slots"] / workers, 3)}
        if args.all_cores
        else {}
    )
    print(
        json.dumps(
            {
                "bench": "side_by_side",
                "study": ("smoke" if args.as_shipped else "smoke, equal work")
                + (", all cores" if args.all_cores else ""),
                "trials_per_run": args.trials,
                "rounds": args.rounds,
                "load_at_start": round(load[0], 2),
                "workers_wall_s": workers,
                "separate_wall_s": separate,
                "ratio": round(separate / workers, 3),
                **extra,
            }
        )
    )


if __name__ == "__main__":
    main()
