"""Does the cost survive load, and does it order models as their real training time does?

    python bench/cost_stability.py [--kind train|decode] [--seconds 2] [--rank] [--tokens 614400] [--quick]

1. Stability: one configuration (a 0.2M-parameter mixed-head model at batch 32 x 128, one thread)
   measured by `mfha.cost.measure_cost` in three fresh processes, one after the other: quiet, beside
   two CPU-burning processes, quiet. The ratios should agree within +-5% while the raw tokens/s of the
   same runs move with the load.
2. `--rank`: RANK_CONFIGS (depth, width, head mix varied around 0.2M parameters) each measured for
   its train cost and trained for `--tokens` tokens on the shared TinyStories slice in its own
   process, on a quiet machine; the Spearman rank correlation between cost and training wall time.

Last line: {"bench": "cost_stability", "kind": ..., "ratios": [...], "ratio_spread": x,
"tokens_per_s": [...], "tokens_per_s_spread": y, "rank_spearman": r or null, ...}
spread = the largest |value / median - 1| over the three runs; "wall_ratios" are the same runs' ratios
in wall time (what the cost would be without the CPU clock, see mfha/cost.py).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATASET = str(ROOT.parent / "shared/data/tinystories")

# (name, n_layers, dim, heads as a HeadSpec dict): around 0.2M parameters at a character vocabulary
STABLE_CONFIG = ("fractal-4L", 4, 56, {"family": "fractal", "base": 32, "levels": 3, "split": 2})
RANK_CONFIGS = [
    ("uniform-1L", 1, 120, {"family": "uniform", "n": 4, "size": 32}),
    ("uniform-2L", 2, 80, {"family": "uniform", "n": 4, "size": 32}),
    ("uniform-6L", 6, 48, {"family": "uniform", "n": 5, "size": 16}),
    ("fractal-4L", 4, 56, {"family": "fractal", "base": 32, "levels": 3, "split": 2}),
    ("geometric-3L", 3, 64, {"family": "geometric", "largest": 32, "smallest": 8, "ratio": 2, "count": 2}),
    ("explicit-2L", 2, 96, {"family": "explicit", "sizes": [32, 16, 16]}),
    ("explicit-5L", 5, 48, {"family": "explicit", "sizes": [32, 32, 16, 8, 8]}),
    ("uniform-8x8-4L", 4, 64, {"family": "uniform", "n": 8, "size": 8}),
]
BATCH, SEQ_LEN = 32, 128


def _configs(entry, vocab: int, tokens: int = 0):
    from mfha import ModelConfig, TrainConfig
    from mfha.heads import HeadSpec

    _, n_layers, dim, heads = entry
    mc = ModelConfig(
        vocab_size=vocab, dim=dim, n_layers=n_layers, heads=HeadSpec.from_dict(heads), max_seq_len=SEQ_LEN, mlp_mult=4.0
    )
    steps = max(1, -(-tokens // (BATCH * SEQ_LEN)))
    tc = TrainConfig(
        dataset=DATASET,
        max_train_stories=1_092,
        max_val_stories=200,
        batch_size=BATCH,
        seq_len=SEQ_LEN,
        max_steps=steps,
        eval_interval=steps,
        eval_windows=48,
        lr=3e-3,
        warmup_steps=min(20, steps - 1),
        device="cpu",
    )
    return mc, tc


def _child(job: dict) -> dict:
    """One fresh process's work: a cost measurement, or a training run timed whole."""
    import torch

    torch.set_num_threads(1)
    from mfha.cost import measure_cost
    from mfha.data import load_data
    from mfha.model import count_parameters
    from mfha.train import train

    vocab = job["vocab"]
    mc, tc = _configs(job["entry"], vocab, job.get("tokens", 0))
    if job["what"] == "cost":
        c = measure_cost(mc, tc, job["kind"], seconds=job["seconds"])
        return {**c.to_dict(), "n_params": count_parameters(mc)}
    data = load_data(tc)
    t = time.perf_counter()
    result = train(mc, tc, data=data)
    return {
        "train_wall_s": time.perf_counter() - t,
        "val_bpc": result.metrics["val_bpc"],
        "n_params": count_parameters(mc),
    }


def run_child(job: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(job)], capture_output=True, text=True, cwd=ROOT
    )
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({job['what']} {job['entry'][0]}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _burn() -> None:
    while True:
        pass


def spread(values: list[float]) -> float:
    m = statistics.median(values)
    return max(abs(v / m - 1) for v in values)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", choices=["train", "decode"], default="train")
    p.add_argument(
        "--seconds", type=float, default=2.0, help="measure_cost's time per measurement (the study file's cost.seconds)"
    )
    p.add_argument(
        "--rank", action="store_true", help="also the rank correlation with real training time (needs a quiet machine)"
    )
    p.add_argument("--tokens", type=int, default=614_400, help="training tokens per configuration for --rank")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke test of this bench: short measurements, --rank on 3 configurations",
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return 0
    if args.quick:
        args.seconds, args.tokens, args.rank = 0.3, 40_960, True

    from mfha import TrainConfig
    from mfha.data import load_data

    vocab = load_data(TrainConfig(dataset=DATASET, max_train_stories=1_092, max_val_stories=200)).tokenizer.vocab_size
    runs = []
    for label in ("quiet", "2 CPU burners beside", "quiet"):
        burners = []
        if label != "quiet":
            burners = [multiprocessing.Process(target=_burn, daemon=True) for _ in range(2)]
            for b in burners:
                b.start()
            time.sleep(0.5)  # let them take their cores first
        try:
            load = os.getloadavg()[0]
            r = run_child(
                {"what": "cost", "entry": STABLE_CONFIG, "vocab": vocab, "kind": args.kind, "seconds": args.seconds}
            )
        finally:
            for b in burners:
                b.kill()
                b.join()
        runs.append({"run": label, "load_1min": round(load, 2), **r})

    print(
        f"{args.kind} cost of {STABLE_CONFIG[0]} ({runs[0]['n_params']:,} params, batch {BATCH} x {SEQ_LEN}, 1 thread), "
        f"three fresh processes, {args.seconds:g} s each:"
    )
    print(
        "| run | cost ratio | clock | round low..high | wall-time ratio | rounds | model tokens/s | reference tokens/s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in runs:
        print(
            f"| {r['run']} | {r['ratio']:.4f} | {r['clock']} | {r['low']:.3f}..{r['high']:.3f} | {r['wall_ratio']:.4f} | {r['rounds']} | "
            f"{r['model_tokens_per_s']:,.0f} | {r['reference_tokens_per_s']:,.0f} |"
        )
    ratios = [r["ratio"] for r in runs]
    speeds = [r["model_tokens_per_s"] for r in runs]
    print(f"ratio spread {spread(ratios):+.1%} (target <= 5%); raw tokens/s spread {spread(speeds):.1%}")

    rank = None
    rows = []
    if args.rank:
        from scipy import stats

        entries = RANK_CONFIGS[:3] if args.quick else RANK_CONFIGS
        for entry in entries:
            c = run_child({"what": "cost", "entry": entry, "vocab": vocab, "kind": "train", "seconds": args.seconds})
            t = run_child({"what": "train", "entry": entry, "vocab": vocab, "tokens": args.tokens})
            rows.append({"config": entry[0], "n_params": c["n_params"], "train_cost": c["ratio"], **t})
        rank = stats.spearmanr([r["train_cost"] for r in rows], [r["train_wall_s"] for r in rows]).statistic
        print(f"\ntrain cost vs training wall time, {args.tokens:,} tokens each (batch {BATCH} x {SEQ_LEN}, 1 thread):")
        print("| configuration | params | train_cost | training wall s | val_bpc |")
        print("| --- | --- | --- | --- | --- |")
        for r in sorted(rows, key=lambda r: r["train_cost"]):
            print(
                f"| {r['config']} | {r['n_params']:,} | {r['train_cost']:.3f} | {r['train_wall_s']:.1f} | {r['val_bpc']:.4f} |"
            )
        print(f"Spearman rank correlation {rank:.3f} over {len(rows)} configurations (target >= 0.9)")

    print(
        json.dumps(
            {
                "bench": "cost_stability",
                "kind": args.kind,
                "config": STABLE_CONFIG[0],
                "seconds": args.seconds,
                "ratios": [round(x, 4) for x in ratios],
                "ratio_spread": round(spread(ratios), 4),
                "clock": runs[0]["clock"],
                "wall_ratios": [round(r["wall_ratio"], 4) for r in runs],
                "wall_ratio_spread": round(spread([r["wall_ratio"] for r in runs]), 4),
                "tokens_per_s": [round(x, 1) for x in speeds],
                "tokens_per_s_spread": round(spread(speeds), 4),
                "loads": [r["load_1min"] for r in runs],
                "rank_spearman": round(rank, 4) if rank is not None else None,
                "rank": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
