#!/usr/bin/env python
"""Search MFHA head-size mixes, depth and width under a parameter budget with Optuna.

python run_search.py run --study studies/tinystories-0.5m.toml --dataset data/tinystories-sample
python run_search.py dashboard
python run_search.py show --study smoke
python run_search.py validate --study smoke --top 3 --seeds 3
python run_search.py export --study smoke --out exports/smoke
python run_search.py studies
python run_search.py report --study smoke --out reports/smoke
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from mfha.errors import ConfigError, MFHAError

DEFAULT_STORAGE = "sqlite:///storage/mfha.db"
DEFAULT_STUDY = "studies/smoke.toml"


def _add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", default=DEFAULT_STUDY, metavar="FILE", help="study file (TOML) (default %(default)s)")
    p.add_argument("--dataset", help="Hub name or local folder; overrides [data].dataset")
    p.add_argument(
        "--storage", metavar="URL", help="SQLAlchemy URL; overrides [study].storage (default sqlite:///storage/mfha.db)"
    )
    p.add_argument(
        "--n-trials",
        type=int,
        metavar="N",
        help="finished trials (COMPLETE + PRUNED) the study should hold in total; a rerun only adds the missing ones",
    )
    p.add_argument(
        "--timeout", type=float, metavar="S", help="stop starting trials after S seconds; overrides [study].timeout_s"
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides [training].device")
    p.add_argument(
        "--no-validation",
        action="store_true",
        help="skip the study file's [validation] after the search (a quick look; validate later with `validate`)",
    )
    _add_trial_flags(
        p,
        workers_help="worker processes on this machine sharing the study (default %(default)s); on more machines, "
        "run the same command on each",
    )


def _add_trial_flags(p: argparse.ArgumentParser, *, workers_help: str) -> None:
    """The flags of the commands that train trials (run, validate)."""
    p.add_argument(
        "--artifacts", metavar="DIR", help="artifact folder (default: beside a SQLite file, else storage/artifacts)"
    )
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch threads per trial (default and most: the cores shared by the workers)",
    )
    p.add_argument("--workers", type=int, default=1, metavar="N", help=workers_help)
    p.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)  # set by the --workers supervisor
    p.add_argument("--no-progress", action="store_true", help="one line per trial instead of progress bars")


def _check_counts(args: argparse.Namespace) -> None:
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be a positive integer, but got threads={args.threads}.")
    if args.workers < 1:
        raise ConfigError(f"--workers must be a positive integer, but got workers={args.workers}.")


def _run(args: argparse.Namespace) -> int:
    from search import load_study_file, run_study

    config = load_study_file(args.study).with_overrides(
        dataset=args.dataset,
        storage=args.storage,
        n_trials=args.n_trials,
        timeout_s=args.timeout,
    )
    if args.device:
        if args.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ConfigError("--device cuda, but no CUDA device is available here; pass --device cpu or auto.")
        config.training["device"] = args.device
    _check_counts(args)
    if args.workers > 1 and args.worker_index is None:
        return _supervise(args, config)
    log = None
    if args.worker_index is not None:
        tag = f"[worker {args.worker_index}]"
        log = lambda msg: print(f"{tag} {msg}", file=sys.stderr, flush=True)
    summary = run_study(
        config,
        artifacts=args.artifacts,
        progress=not args.no_progress and args.worker_index is None,
        threads=args.threads,
        workers=args.workers,
        log=log,
    )
    if args.worker_index is not None:
        return 130 if summary.interrupted else 0
    print(summary.line())
    if summary.interrupted:
        print(
            "interrupted: the running trial was closed as FAIL and queued again; rerun the same command to resume.",
            file=sys.stderr,
        )
        return 130
    if config.validation is not None and not args.no_validation and summary.best_number is not None:
        from search import run_validation

        summary = run_validation(config, artifacts=args.artifacts, progress=not args.no_progress, threads=args.threads)
        return _after_validation(config.name, config.storage, summary.interrupted)
    _print_next(config.name, config.storage, summary.best_number is not None)
    return 0


def _print_next(name: str, storage_url: str, done: bool) -> None:
    from search.store.storage import storage_flag

    if done:
        print(f"next: python run_search.py export --study {name}{storage_flag(storage_url)} --out exports/{name}")


def _after_validation(name: str, storage_url: str, interrupted: bool) -> int:
    from search import validated_table

    print(validated_table(storage_url, name))
    if interrupted:
        print(
            "interrupted: the running validation trial was closed as FAIL and queued again; rerun the same command to resume.",
            file=sys.stderr,
        )
        return 130
    _print_next(name, storage_url, True)
    return 0


def _supervise(args: argparse.Namespace, config) -> int:
    """--workers N: check everything once here (one error line, not N), then run N workers and wait."""
    import time

    from search import count_trials, make_storage, prepare, run_workers, search_study, summarize
    from search.run.console import HeldLog
    from search.run.host import preview
    from search.run.runner import removed_if_failed

    t0 = time.perf_counter()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    held = HeldLog(log)  # until the checks have passed: a mistake is the one line the user sees
    held(preview(args.threads, config.threads, args.workers))  # each worker then says what it got
    with removed_if_failed(config.storage):
        storage = make_storage(config.storage)
        prep = prepare(config, workers=args.workers)  # also fills the data cache every worker reads
        # created here, so a new study's baselines are enqueued once, not by every worker that finds it empty
        search_study(config, prep, storage, parallel=True, log=held)
    held.release()
    before = count_trials(config.storage, config.name)
    codes = run_workers(_argv(args), args.workers, log=log)
    summary = summarize(config.storage, config.name, before=before, wall_s=time.perf_counter() - t0)
    print(summary.line())
    if (
        _worker_codes(codes, args.workers)
        or config.validation is None
        or args.no_validation
        or summary.best_number is None
    ):
        return _worker_codes(codes, args.workers)
    return _supervise_validation(args, config, log=log)


def _worker_codes(codes: list[int], workers: int) -> int:
    if 130 in codes:
        print(
            "interrupted: each worker closed its running trial as FAIL and queued it again; rerun the same command to resume.",
            file=sys.stderr,
        )
        return 130
    bad = [(i, c) for i, c in enumerate(codes) if c]
    if bad:
        raise MFHAError(
            f"worker {bad[0][0]} of {workers} exited with code {bad[0][1]} (its message is above); rerun the same command to resume."
        )
    return 0


def _supervise_validation(args: argparse.Namespace, config, *, log) -> int:
    """The validation pairs enqueued once here (so workers never race to enqueue), then N validate workers."""
    from search import enqueue_validation, run_workers

    enqueue_validation(
        config,
        top=getattr(args, "top", None),
        seeds=getattr(args, "seeds", None),
        dataset=args.dataset,
        workers=args.workers,
        log=log,
    )
    argv = ["--study", config.name, "--storage", config.storage, "--workers", str(args.workers)]
    for flag in ("dataset", "artifacts", "threads", "top", "seeds"):
        if getattr(args, flag, None) is not None:
            argv += [f"--{flag}", str(getattr(args, flag))]
    codes = run_workers(
        argv + (["--no-progress"] if args.no_progress else []), args.workers, log=log, command="validate"
    )
    if 130 in codes:
        return _after_validation(config.name, config.storage, True)
    _worker_codes(codes, args.workers)
    return _after_validation(config.name, config.storage, False)


def _argv(args: argparse.Namespace) -> list[str]:
    """The run flags again, for workers started from Python rather than from a command line."""
    out = ["--study", args.study, "--workers", str(args.workers)]
    for flag in ("dataset", "storage", "n_trials", "timeout", "device", "artifacts", "threads"):
        value = getattr(args, flag)
        if value is not None:
            out += [f"--{flag.replace('_', '-')}", str(value)]
    return out + (["--no-progress"] if args.no_progress else [])


def _add_validate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", required=True, metavar="NAME", help="the search study's name (its [study].name)")
    p.add_argument("--storage", default=DEFAULT_STORAGE, metavar="URL", help="SQLAlchemy URL (default %(default)s)")
    p.add_argument(
        "--top",
        type=int,
        metavar="K",
        help="retrain the K best distinct configurations (default: [validation] top, else 3)",
    )
    p.add_argument(
        "--seeds", type=int, metavar="N", help="fresh seeds per configuration (default: [validation] seeds, else 3)"
    )
    p.add_argument("--dataset", help="Hub name or local folder (default: the one the search trials trained on)")
    _add_trial_flags(p, workers_help="worker processes on this machine (default %(default)s)")


def _validate(args: argparse.Namespace) -> int:
    from search import check_flags, run_validation, stored_config

    check_flags(top=args.top, seeds=args.seeds)
    _check_counts(args)
    config = stored_config(args.storage, args.study, dataset=args.dataset)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    if args.workers > 1 and args.worker_index is None:
        return _supervise_validation(args, config, log=log)
    if args.worker_index is not None:
        log = lambda msg: print(f"[worker {args.worker_index}] {msg}", file=sys.stderr, flush=True)
    summary = run_validation(
        config,
        top=args.top,
        seeds=args.seeds,
        dataset=args.dataset,
        artifacts=args.artifacts,
        progress=not args.no_progress and args.worker_index is None,
        workers=args.workers,
        threads=args.threads,
        log=log,
    )
    if args.worker_index is not None:
        return 130 if summary.interrupted else 0
    return _after_validation(config.name, config.storage, summary.interrupted)


def _add_dashboard(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", default=DEFAULT_STORAGE, metavar="URL", help="SQLAlchemy URL (default %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port (default %(default)s)")
    p.add_argument(
        "--artifacts", metavar="DIR", help="artifact folder (default: beside a SQLite file, else storage/artifacts)"
    )


def _dashboard(args: argparse.Namespace) -> int:
    from search import serve

    serve(args.storage, host=args.host, port=args.port, artifacts=args.artifacts)
    return 0


def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", required=True, metavar="NAME", help="study name (its [study].name)")
    p.add_argument("--storage", default=DEFAULT_STORAGE, metavar="URL", help="SQLAlchemy URL (default %(default)s)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--trial", type=int, metavar="N", help="export trial number N (default: the best)")
    which.add_argument("--top", type=int, metavar="K", help="export the K best trials into OUT/rank1-trialN, ...")
    which.add_argument(
        "--pareto",
        action="store_true",
        help="multi-objective study: export every trial on the Pareto front into OUT/pareto1-trialN, ... (best val_bpc first)",
    )
    which.add_argument(
        "--max-cost",
        type=float,
        metavar="X",
        help="multi-objective study: export the best val_bpc whose cost is at most X (1.0 = the reference model's)",
    )
    p.add_argument(
        "--cost", metavar="NAME", help="the cost --max-cost limits, where the study has two (train_cost or decode_cost)"
    )
    p.add_argument("--out", metavar="DIR", help="export folder (default exports/NAME)")
    p.add_argument(
        "--runs", default="runs", metavar="DIR", help="where the printed training commands write (default %(default)s)"
    )


def _export(args: argparse.Namespace) -> int:
    from search import export_trials

    exported = export_trials(
        args.storage,
        args.study,
        args.out or f"exports/{args.study}",
        trial=args.trial,
        top=args.top,
        pareto=args.pareto,
        max_cost=args.max_cost,
        cost=args.cost,
        runs=args.runs,
    )
    for i, e in enumerate(exported):
        value = f"val_bpc {e.value:.4f}" if e.value is not None else "no final value"
        value += "".join(f", {name} {c:.3f}" for name, c in e.costs.items())
        if e.evidence is not None:
            v = e.evidence
            costs = "".join(f", {name} {c.text(3)}" for name, c in v.costs.items())
            label = "validated winner" if i == 0 and not args.pareto else "validated"
            if args.max_cost is not None:
                label += f" within {args.cost or next(iter(e.costs), 'cost')} <= {args.max_cost:g}"
            value = (
                f"{label}: val_bpc {v.interval.text()}{costs} (95% interval, seeds {', '.join(map(str, v.seeds))}); "
                f"its search value was {e.value:.4f}"
            )
        print(f"exported trial {e.trial_number} ({value}) to {e.folder}")
        if e.replaced is not None:
            print(f"  replaced:            the earlier export of {e.replaced} in that folder")
        print(f"  full training:       {e.command}")
        print(f"  reproduce the trial: {e.check_command}")
    return 0


def _add_show(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", required=True, metavar="NAME", help="study name")
    p.add_argument("--storage", default=DEFAULT_STORAGE, metavar="URL", help="SQLAlchemy URL (default %(default)s)")
    p.add_argument("--top", type=int, default=10, metavar="K", help="rows to print (default %(default)s)")
    p.add_argument("--csv", metavar="FILE", help="also write every trial to this CSV file")
    p.add_argument(
        "--study-file",
        action="store_true",
        help="print the study file the study was last run with (TOML), instead of its trials",
    )


def _show(args: argparse.Namespace) -> int:
    from search import show, study_file_text

    print(
        study_file_text(args.storage, args.study)
        if args.study_file
        else show(args.storage, args.study, top=args.top, csv=args.csv)
    )
    return 0


def _add_studies(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", default=DEFAULT_STORAGE, metavar="URL", help="SQLAlchemy URL (default %(default)s)")


def _studies(args: argparse.Namespace) -> int:
    from search import studies_frame

    df = studies_frame(args.storage)
    print(df.to_string(index=False) if not df.empty else "no studies stored yet.")
    return 0


def _add_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", required=True, metavar="NAME", help="the search study's name (its [study].name)")
    p.add_argument("--storage", default=DEFAULT_STORAGE, metavar="URL", help="SQLAlchemy URL (default %(default)s)")
    p.add_argument("--out", metavar="DIR", help="report folder (default reports/NAME)")


def _report(args: argparse.Namespace) -> int:
    from search import write_report

    report = write_report(args.storage, args.study, args.out or f"reports/{args.study}")
    print(f"wrote {', '.join(str(f) for f in report.files)}")
    print(report.verdict)
    return 0


# name: (what it does, example, add arguments, run)
COMMANDS: dict[str, tuple[str, str, Callable, Callable]] = {
    "run": (
        "run or resume a study from a study file",
        "python run_search.py run --study studies/tinystories-0.5m.toml --dataset data/tinystories-sample",
        _add_run,
        _run,
    ),
    "validate": (
        "retrain the best configurations with fresh seeds; rank them by mean val_bpc with a 95%% interval",
        "python run_search.py validate --study smoke --top 3 --seeds 3",
        _add_validate,
        _validate,
    ),
    "dashboard": (
        "serve optuna-dashboard (trials, curves, artifacts) for a storage",
        "python run_search.py dashboard --storage sqlite:///storage/mfha.db --port 8080",
        _add_dashboard,
        _dashboard,
    ),
    "export": (
        "write a trial's configs for full training and print the training command",
        "python run_search.py export --study smoke --top 3 --out exports/smoke",
        _add_export,
        _export,
    ),
    "show": (
        "print the top trials of a study as a table",
        "python run_search.py show --study smoke --top 5 --csv smoke.csv",
        _add_show,
        _show,
    ),
    "studies": (
        "list the studies in a storage with their trial counts and best value",
        "python run_search.py studies --storage sqlite:///storage/mfha.db",
        _add_studies,
        _studies,
    ),
    "report": (
        "write an offline HTML report, summary.md and report.json of a study and its validation (with the verdict)",
        "python run_search.py report --study smoke --out reports/smoke",
        _add_report,
        _report,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_search.py",
        description="Search MFHA head-size mixes, depth and width under a parameter budget.",
        epilog="examples:\n" + "\n".join(f"  {ex}" for _, ex, _, _ in COMMANDS.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for name, (what, example, add, run) in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=what,
            description=(what[0].upper() + what[1:] + ".").replace(
                "%%", "%"
            ),  # help strings are %-formatted, this is not
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add(p)
        p.set_defaults(func=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MFHAError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
