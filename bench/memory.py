"""Forecast vs measured peak training memory over varied configurations.

Each row: `estimate_training_peak` (analytic, no tensors) against `measure_training_peak` (real AdamW
steps in a fresh child process: peak RSS on CPU, `max_memory_allocated` on CUDA). The configs vary
depth, width, head mix (uniform, fractal, geometric, explicit, per-layer, grouped K/V), batch,
sequence length, vocabulary and MLP width; several keep > 200 MB of activations so the model's part is
not hidden behind the framework baseline.

Usage: python bench/memory.py [--quick] [--device auto|cpu|cuda] [--steps 8]
The last line is JSON: configs, worst_over and worst_under as forecast / measured - 1.

--trials: real trials instead, through the search's own machinery (`search.run_study`: the trial
process forked from the forkserver, its data mapped and its warm-up done, then mfha.train), on the
smoke study (batch 16: its batch-2048 trials are pruned before allocation and so have no measured
peak) and the 0.5M-parameter study, each with a token budget cut short (the peak comes in the first
steps; every other setting as in the study file). Each row: the forecast the objective recorded
(`forecast_peak_mib`) against the trial process's measured peak (`peak_mem_mib`: the larger of the
watched RSS and the process's own VmHWM). mfha.memory's constants were fitted on the fresh-process
configs above, so every trial here is held out. Last line: JSON with trials, worst_over and
worst_under, also per study. --quick: 4 smoke trials.

    python bench/memory.py --trials [--quick] [--dataset ../shared/data/tinystories]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from mfha import ModelConfig, TrainConfig, count_parameters, explicit, fractal, geometric, uniform
from mfha.memory import forecast_parts, framework_baseline_bytes, measure_training_peak

# name -> (ModelConfig kwargs, batch_size, seq_len)
CONFIGS: dict[str, tuple[dict, int, int]] = {
    "tiny": (dict(vocab_size=256, dim=64, n_layers=2, heads=uniform(4, 16), max_seq_len=64), 8, 64),
    "fractal": (dict(vocab_size=256, dim=96, n_layers=4, heads=fractal(32, 3), max_seq_len=256), 16, 256),
    "geometric": (dict(vocab_size=512, dim=96, n_layers=3, heads=geometric(32, 8, count=2), max_seq_len=512), 8, 512),
    "explicit": (
        dict(vocab_size=1024, dim=128, n_layers=3, heads=explicit([48, 32, 16, 16, 8, 8]), max_seq_len=128),
        8,
        128,
    ),
    "per_layer": (
        dict(
            vocab_size=256,
            dim=128,
            n_layers=4,
            max_seq_len=256,
            heads=[uniform(4, 32), fractal(64, 3), geometric(32, 8, width=32), explicit([48, 32, 16, 16, 8])],
        ),
        8,
        256,
    ),
    "gqa_fractal": (
        dict(vocab_size=2048, dim=128, n_layers=4, heads=fractal(64, 4), kv_share=2, max_seq_len=256),
        4,
        256,
    ),
    "gqa_uniform": (
        dict(vocab_size=1024, dim=96, n_layers=3, heads=uniform(6, 16), kv_share=3, max_seq_len=256),
        16,
        256,
    ),
    "deep_narrow": (dict(vocab_size=256, dim=64, n_layers=12, heads=uniform(2, 32), max_seq_len=256), 16, 256),
    "wide_shallow": (dict(vocab_size=2048, dim=384, n_layers=2, heads=uniform(6, 64), max_seq_len=64), 8, 64),
    "param_heavy": (dict(vocab_size=8192, dim=640, n_layers=4, heads=uniform(10, 64), max_seq_len=32), 2, 32),
    "big_vocab": (dict(vocab_size=16384, dim=64, n_layers=2, heads=fractal(32, 2), max_seq_len=256), 8, 256),
    "long_seq": (dict(vocab_size=256, dim=96, n_layers=3, heads=fractal(32, 3), max_seq_len=1024), 2, 1024),
    "big_batch": (dict(vocab_size=512, dim=64, n_layers=3, heads=geometric(32, 8, width=32), max_seq_len=128), 64, 128),
    "wide_mlp": (dict(vocab_size=256, dim=96, n_layers=3, heads=uniform(3, 32), mlp_mult=8.0, max_seq_len=256), 8, 128),
}
# --quick: small, fast configs (a smoke run of the whole path, not the acceptance figures)
QUICK: dict[str, tuple[dict, int, int]] = {
    "tiny": CONFIGS["tiny"],
    "small_gqa": (dict(vocab_size=512, dim=64, n_layers=2, heads=fractal(32, 3), kv_share=2, max_seq_len=128), 8, 128),
    "small_per_layer": (
        dict(vocab_size=1024, dim=64, n_layers=2, max_seq_len=128, heads=[uniform(2, 32), geometric(32, 8, width=32)]),
        8,
        128,
    ),
}

# --trials: study file, name in the table, tokens per trial, batch sizes (None: the study's), trials per run
STUDIES = [
    (ROOT / "studies" / "smoke.toml", "smoke", 61_440, (16,), 14),  # 60 steps of 16 x 64
    (ROOT / "studies" / "tinystories-0.5m.toml", "0.5m", 245_760, None, 16),  # 120 steps at batch 16, 30 at 64
]
QUICK_STUDIES = [(ROOT / "studies" / "smoke.toml", "smoke", 20_480, (16,), 4)]
DATASET = str(ROOT.parent / "shared" / "data" / "tinystories")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)} (a smoke run)")
    ap.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    # the trainer's held logits make the heap settle over the first steps; STEP_SLACK was fitted at 8
    ap.add_argument("--steps", type=int, default=8, help="training steps per measurement")
    ap.add_argument("--trials", action="store_true", help="real trials of the smoke and 0.5M studies (see above)")
    ap.add_argument("--dataset", default=DATASET, help="--trials: the studies' data (default: %(default)s)")
    args = ap.parse_args(argv)
    if args.trials:
        return trials_main(QUICK_STUDIES if args.quick else STUDIES, args.dataset)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    configs = QUICK if args.quick else CONFIGS

    baseline = framework_baseline_bytes() if device == "cpu" else 0
    print(f"device {device}, framework baseline {baseline / 2**20:.0f} MB, {args.steps} steps per measurement")
    header = f"{'config':<13} {'params':>8} {'heads':<28} {'B':>3} {'T':>5} {'V':>6} {'acts MB':>8} {'forecast MB':>11} {'measured MB':>11} {'error':>7} {'s':>5}"
    print(header)
    print("-" * len(header))
    errors = []
    for name, (kwargs, B, T) in configs.items():
        mc = ModelConfig(**kwargs)
        tc = TrainConfig(batch_size=B, seq_len=T)
        parts = forecast_parts(mc, tc, device, baseline_bytes=baseline)
        t0 = time.perf_counter()
        measured = measure_training_peak(mc, tc, device, steps=args.steps)
        err = parts["peak"] / measured - 1
        errors.append(err)
        heads = mc.describe_heads()
        heads = heads if len(heads) <= 28 else heads[:25] + "..."
        print(
            f"{name:<13} {count_parameters(mc) / 1e6:>7.2f}M {heads:<28} {B:>3} {T:>5} {mc.vocab_size:>6} "
            f"{parts['activations'] / 2**20:>8.0f} {parts['peak'] / 2**20:>11.0f} {measured / 2**20:>11.0f} "
            f"{err:>+7.1%} {time.perf_counter() - t0:>5.1f}",
            flush=True,
        )
    print(
        json.dumps(
            {
                "bench": "memory",
                "device": device,
                "configs": len(errors),
                "worst_over": round(max(0.0, max(errors)), 4),
                "worst_under": round(min(0.0, min(errors)), 4),
            }
        )
    )
    return 0


def trials_main(studies: list, dataset: str) -> int:
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="mfha-memory-") as folder:
        for path, name, tokens, batch_sizes, n_trials in studies:
            rows += [
                {**r, "study": name}
                for r in trial_rows(trial_study(path, name, tokens, batch_sizes, n_trials, dataset, Path(folder)))
            ]
    if not rows:
        raise SystemExit("no trial trained: nothing to compare")
    print_trials(rows)
    errors = [r["error"] for r in rows]
    result = {
        "bench": "memory",
        "mode": "trials",
        "trials": len(rows),
        "worst_over": round(max(errors), 4),
        "worst_under": round(min(errors), 4),
        "studies": {},
    }
    for name in dict.fromkeys(r["study"] for r in rows):
        errs = [r["error"] for r in rows if r["study"] == name]
        result["studies"][name] = {
            "trials": len(errs),
            "worst_over": round(max(errs), 4),
            "worst_under": round(min(errs), 4),
        }
    print(json.dumps(result))
    return 0


def print_trials(rows: list[dict]) -> None:
    header = (
        f"{'study':<6} {'trial':>5} {'heads':<30} {'params':>8} {'B':>3} {'V':>4} {'baseline':>8} "
        f"{'model':>6} {'forecast MiB':>12} {'measured MiB':>12} {'error':>7}"
    )
    print(
        f"baseline: the run's trial process as measured (a fresh process's: {framework_baseline_bytes() / 2**20:.0f} MiB); "
        f"model: the forecast less the baseline. Every row is held out: mfha.memory's constants were fitted on this "
        f"bench's fresh-process configs"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        heads = r["heads"] if len(r["heads"]) <= 30 else r["heads"][:27] + "..."
        print(
            f"{r['study']:<6} {r['trial']:>5} {heads:<30} {r['params']:>8,} {r['B']:>3} {r['V']:>4} "
            f"{r['baseline'] / 2**20:>8.0f} {r['model'] / 2**20:>6.1f} {r['forecast'] / 2**20:>12.1f} "
            f"{r['measured'] / 2**20:>12.1f} {r['error']:>+7.1%}",
            flush=True,
        )


def trial_study(
    path: Path, name: str, tokens: int, batch_sizes: tuple | None, n_trials: int, dataset: str, folder: Path
):
    """Run the study file's study, its token budget cut to `tokens`; returns the optuna study."""
    import optuna

    from search import load_study_file, run_study

    base = load_study_file(path).with_overrides(
        dataset=dataset, storage=f"sqlite:///{folder}/{name}.db", n_trials=n_trials
    )
    config = replace(
        base,
        name=f"memory-{name}",
        timeout_s=None,
        validation=None,
        space=replace(base.space, batch_size=batch_sizes or base.space.batch_size),
        # the pruner keeps the study's settings: its warm-up, counted in tokens, outlasts this budget
        tokens=tokens,
        eval_tokens=tokens // 2,
        warmup_tokens=tokens // 10,
    )
    run_study(config, progress=False, log=lambda msg: None)
    return optuna.load_study(study_name=config.name, storage=config.storage)


def trial_rows(study) -> list[dict]:
    """The trials that trained their own configuration: forecast vs measured peak of the trial process."""
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        a = t.user_attrs
        if not a.get("allocated") or "reused_from" in a or not a.get("peak_mem_mib"):
            continue
        tc = TrainConfig.from_dict(a["train_config"])
        model = forecast_parts(ModelConfig.from_dict(a["model_config"]), tc, "cpu", baseline_bytes=0)["peak"]
        forecast, measured = a["forecast_peak_mib"] * 2**20, a["peak_mem_mib"] * 2**20
        rows.append(
            {
                "trial": t.number,
                "heads": a["heads"],
                "params": a["n_params"],
                "B": tc.batch_size,
                "V": a["model_config"]["vocab_size"],
                "baseline": forecast - model,
                "model": model,
                "forecast": forecast,
                "measured": measured,
                "error": forecast / measured - 1,
            }
        )
    return rows


if __name__ == "__main__":
    sys.exit(main())
