"""Storage under load: 1,000 stored trials, then suggestion, `show` and dashboard API times.

    python bench/storage_load.py [--trials 1000] [--backends sqlite,postgresql] [--quick]

For each backend a fresh store (a temporary SQLite file; a temporary PostgreSQL database on the
server at 127.0.0.1:5432, dropped after) gets N finished trials of the smoke study's space, shaped
like the real objective's: params, five intermediate values (two for pruned ones), the user attrs a
trial carries (heads, n_params, both configs, memory, reasons) and four artifact records. No
training. Then:
  suggest_s    ask + suggest every param with the smoke study's TPE sampler (median of 5)
  show_s       `python run_search.py show --study NAME --storage URL`, the whole command (median of 3)
  show_inproc_s  the same `show` called in a warm process: the command minus interpreter start and imports
  api_cold_s   the dashboard's GET /api/studies/ID (what the study page fetches) on a fresh server
  api_warm_s   the same request again (median of 3; the server caches finished trials)
  contention   4 processes writing 25 trials each into one study at once (12 attrs, 5 reports per
               trial, as real trials do): trials/s and "database is locked" errors
Targets: suggestion < 0.5 s, show < 2 s, dashboard API < 2 s.

Last line: {"bench": "storage_load", "sqlite": {...}, "postgresql": {...}}
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SMOKE = ROOT / "studies" / "smoke.toml"
PG_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
TARGETS = {"suggest_s": 0.5, "show_s": 2.0, "api_cold_s": 2.0, "api_warm_s": 2.0}
NAME = "load"
CHAR_VOCAB = 329  # the character vocabulary of the smoke slice: the space only needs its size


def fill(url: str, n: int, *, seed: int = 0) -> float:
    """N finished trials in one study at `url`, added in batches; returns the seconds it took."""
    import optuna
    from optuna.trial import TrialState

    from search import SearchSpace, SpaceSampler, load_study_file, make_storage

    space = SearchSpace(load_study_file(SMOKE), {None: CHAR_VOCAB})
    # points of the real space, drawn in memory by a random sampler
    drawer = optuna.create_study(sampler=SpaceSampler(optuna.samplers.RandomSampler(seed=seed)))
    rng = random.Random(seed)
    t0 = time.perf_counter()
    trials = []
    while len(trials) < n:
        trial = drawer.ask()
        cand = space.suggest(trial)
        frozen = drawer.tell(trial, state=TrialState.FAIL)
        trials.append(_shaped(len(trials), cand, frozen, rng))
    storage = make_storage(url, heartbeat_interval=None)
    study = optuna.create_study(study_name=NAME, storage=storage, direction="minimize")
    for i in range(0, n, 100):
        study.add_trials(trials[i : i + 100])
    return time.perf_counter() - t0


def _shaped(i: int, cand, frozen, rng: random.Random):
    from optuna.trial import TrialState, create_trial

    value = 2.5 + rng.random()
    pruned = rng.random() < 0.4
    steps = [40, 80] if pruned else [40, 80, 120, 160, 200]
    attrs = {
        **cand.attrs,
        "config_key": f"{i:020x}",
        "model_config": cand.model_config.to_dict(),
        "train_config": cand.train_config.to_dict(),
        "forecast_peak_mib": round(300 + 40 * rng.random(), 1),
        "allocated": True,
        "peak_mem_mib": round(290 + 30 * rng.random(), 1),
        "steps": steps[-1],
        "tokens_per_s": round(20000 + 5000 * rng.random(), 1),
        "train_s": round(5 + rng.random(), 3),
        "worker": f"bench:{1000 + i % 3}",
        "threads": 1,
    }
    if pruned:
        attrs.update(
            prune_kind="loss",
            prune_reason=f"lagging loss (median pruner): val_bpc {value + 1:.4f} at step 80; "
            f"other trials at step 80: median {value:.4f}, best {value - 0.5:.4f} (n=40)",
        )
    artifacts = {}
    for name, mime in (
        ("model_config.json", "application/json"),
        ("train_config.json", "application/json"),
        ("metrics.csv", "text/csv"),
        ("loss_curve.png", "image/png"),
    ):
        aid = str(uuid.UUID(int=rng.getrandbits(128)))
        artifacts[f"artifacts:{aid}"] = json.dumps(
            {"artifact_id": aid, "filename": name, "mimetype": mime, "encoding": None}
        )
    return create_trial(
        state=TrialState.PRUNED if pruned else TrialState.COMPLETE,
        value=None if pruned else value,
        params=frozen.params,
        distributions=frozen.distributions,
        user_attrs=attrs,
        system_attrs=artifacts,
        intermediate_values={s: value + (200 - s) / 100 for s in steps},
    )


def suggest_time(url: str, repeats: int) -> list[float]:
    import optuna
    from optuna.trial import TrialState

    from search import SearchSpace, load_study_file, make_storage

    space = SearchSpace(load_study_file(SMOKE), {None: CHAR_VOCAB})
    # no heartbeat: these trials are asked by hand, outside `optimize`
    study = optuna.load_study(
        study_name=NAME, storage=make_storage(url, heartbeat_interval=None), sampler=space.make_sampler()
    )
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        trial = study.ask()
        space.suggest(trial)
        times.append(time.perf_counter() - t0)
        study.tell(trial, state=TrialState.FAIL)
    return times


def show_time(url: str, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "run_search.py", "show", "--study", NAME, "--storage", url],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise RuntimeError(f"show failed: {proc.stderr[-2000:]}")
    return times


def show_inproc_time(url: str, repeats: int) -> list[float]:
    """`show` without the interpreter's start and imports: what the command itself adds."""
    from search import show

    show(url, NAME)  # imports and the first connection
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        show(url, NAME)
        times.append(time.perf_counter() - t0)
    return times


def api_times(url: str, repeats: int, folder: Path) -> tuple[float, list[float], int]:
    from tests._cli import free_port

    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "run_search.py",
            "dashboard",
            "--storage",
            url,
            "--port",
            str(port),
            "--artifacts",
            str(folder / "artifacts"),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                studies = _get(f"{base}/api/studies")
                break
            except OSError as e:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the dashboard did not answer: {server.stderr.read()[-2000:] if server.poll() is not None else 'timeout'}"
                    ) from e
                time.sleep(0.2)
        (sid,) = [s["study_id"] for s in studies["study_summaries"] if s["study_name"] == NAME]
        t0 = time.perf_counter()
        detail = _get(f"{base}/api/studies/{sid}")
        cold = time.perf_counter() - t0
        warm = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            _get(f"{base}/api/studies/{sid}")
            warm.append(time.perf_counter() - t0)
        return cold, warm, len(detail["trials"])
    finally:
        server.terminate()
        server.wait(20)


def _get(url: str):
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.loads(r.read())


def _hammer(url: str, n_trials: int, queue, go) -> None:
    """One worker process: trials that write what a real one writes (attrs, reports), no training."""
    import optuna
    import sqlalchemy.exc

    from search import make_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # the heartbeat stays on (its writes are part of a real worker's load); Optuna warns that ask/tell
    # with a heartbeat is meant for optimize(), once per trial
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    study = optuna.load_study(
        study_name="contention", storage=make_storage(url), sampler=optuna.samplers.RandomSampler()
    )
    errors, done = [], 0
    queue.put("ready")
    go.wait()
    for _ in range(n_trials):
        try:
            trial = study.ask()
            x = trial.suggest_float("x", 0, 1)
            for k in range(12):
                trial.set_user_attr(f"attr_{k}", x)
            for step in range(5):
                trial.report(x + step, step)
            study.tell(trial, x)
            done += 1
        except sqlalchemy.exc.OperationalError as e:
            errors.append(str(e.orig or e).splitlines()[0])
    queue.put((done, errors))


def contention(url: str, workers: int, n_trials: int) -> dict:
    """`workers` processes writing trials into one study at once: throughput and lock errors."""
    import multiprocessing

    import optuna

    from search import make_storage

    optuna.create_study(study_name="contention", storage=make_storage(url))
    ctx = multiprocessing.get_context("spawn")
    queue, go = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_hammer, args=(url, n_trials, queue, go)) for _ in range(workers)]
    for p in procs:
        p.start()
    for _ in procs:  # all imported and connected: the clock times the writes only
        assert queue.get(timeout=300) == "ready"
    t0 = time.perf_counter()
    go.set()
    results = [queue.get(timeout=600) for _ in procs]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join(30)
    errors = [e for _, errs in results for e in errs]
    done = sum(d for d, _ in results)
    return {
        "workers": workers,
        "trials": done,
        "trials_per_s": round(done / wall, 1),
        "lock_errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


def measure(url: str, n: int, folder: Path, *, repeats: int) -> dict:
    fill_s = fill(url, n)
    suggest = suggest_time(url, 5 if repeats > 1 else 2)
    show = show_time(url, repeats)
    show_inproc = show_inproc_time(url, repeats)
    cold, warm, listed = api_times(url, repeats, folder)
    if listed < n:
        raise RuntimeError(f"the dashboard listed {listed} trials, expected at least {n}")
    busy = contention(url, 4 if repeats > 1 else 2, 25 if repeats > 1 else 5)
    return {
        "trials": n,
        "fill_s": round(fill_s, 2),
        "suggest_s": round(statistics.median(suggest), 4),
        "suggest_max_s": round(max(suggest), 4),
        "show_s": round(statistics.median(show), 3),
        "show_inproc_s": round(statistics.median(show_inproc), 3),
        "api_cold_s": round(cold, 3),
        "api_warm_s": round(statistics.median(warm), 3),
        "contention_trials_per_s": busy["trials_per_s"],
        "contention_lock_errors": busy["lock_errors"],
    }


def with_sqlite(n: int, repeats: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="storage-load-") as tmp:
        return measure(f"sqlite:///{tmp}/load.db", n, Path(tmp), repeats=repeats)


def with_postgresql(n: int, repeats: int) -> dict:
    import psycopg

    name = f"mfha_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            with tempfile.TemporaryDirectory(prefix="storage-load-") as tmp:
                return measure(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", n, Path(tmp), repeats=repeats)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    p.add_argument("--quick", action="store_true", help="30 trials, one repeat (a check that it runs, not figures)")
    args = p.parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    n = 30 if args.quick else args.trials
    repeats = 1 if args.quick else 3
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    runners = {"sqlite": with_sqlite, "postgresql": with_postgresql}
    unknown = [b for b in backends if b not in runners]
    if unknown:
        p.error(f"--backends takes sqlite and postgresql, but got {unknown[0]!r}")
    results = {b: runners[b](n, repeats) for b in backends}

    cols = [
        "trials",
        "fill_s",
        "suggest_s",
        "suggest_max_s",
        "show_s",
        "show_inproc_s",
        "api_cold_s",
        "api_warm_s",
        "contention_trials_per_s",
        "contention_lock_errors",
    ]
    print("| backend | " + " | ".join(cols) + " |")
    print("| --- " * (len(cols) + 1) + "|")
    for b, r in results.items():
        print(f"| {b} | " + " | ".join(str(r[c]) for c in cols) + " |")
    for b, r in results.items():
        missed = [f"{k} {r[k]} >= {t}" for k, t in TARGETS.items() if r[k] >= t]
        print(f"{b}: " + ("all targets met" if not missed else "missed: " + ", ".join(missed)))
    print(json.dumps({"bench": "storage_load", **results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
