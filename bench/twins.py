"""Mixed head sizes against their uniform twins, with everything else held equal.

For each of a few mixed configurations (families and depths, character level, about 0.1-0.3M
parameters), its twins replace every layer's mix by uniform heads of the same total width
(`mfha.heads.uniform_twin`; the two sizes of the space nearest the mix's mean head size), so depth,
width, MLP, learning rate, batch, tokens, data and parameter count are the same. Each variant
trains on the same seeds; the table gives the paired difference mixed - twin (mean over seeds, 95%
Student-t interval, n - 1 df) and each variant's train_cost (its seconds per token over the fixed
reference model's, `mfha.cost`), so the price of a mix sits beside what it buys.

    python bench/twins.py             # 4 configurations x 3 variants x 3 seeds, 204,800 tokens each
    python bench/twins.py --quick     # 1 configuration, 2 seeds, a few steps (a smoke run)

Last line: {"bench": "twins", "pairs": [{"config", "twin", "diff", "low", "high", "cost_ratio"}, ...]}
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATASET = str(ROOT.parent / "shared/data/tinystories")

from mfha.heads import HeadSpec, explicit, fractal, geometric, twin_sizes, uniform_twin

SPACE_SIZES = [8, 16, 32]  # the uniform sizes a study space would offer
# (name, n_layers, dim, heads: one spec for every layer, or one per layer)
CONFIGS: list[tuple[str, int, int, HeadSpec | list[HeadSpec]]] = [
    ("fractal-2L", 2, 96, fractal(base=32, levels=3)),
    ("geometric-3L", 3, 64, geometric(32, 8, count=2)),
    ("explicit-1L", 1, 128, explicit([32, 16, 16])),
    ("per-layer-2L", 2, 80, [fractal(base=32, levels=3), explicit([64, 32])]),
]
BATCH, SEQ_LEN = 8, 128


def twin_heads(heads: HeadSpec | list[HeadSpec], size: int) -> HeadSpec | list[HeadSpec]:
    return [uniform_twin(h, size) for h in heads] if isinstance(heads, list) else uniform_twin(heads, size)


def describe(heads: HeadSpec | list[HeadSpec]) -> str:
    return " | ".join(h.render() for h in heads) if isinstance(heads, list) else heads.render()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=DATASET)
    ap.add_argument("--tokens", type=int, default=204_800, help="training tokens per run")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--cost-seconds", type=float, default=1.0, help="mfha.cost's time per variant")
    ap.add_argument("--quick", action="store_true", help="1 configuration, 2 seeds, 4,096 tokens, a short cost")
    args = ap.parse_args()
    configs = CONFIGS
    if args.quick:
        configs, args.tokens, args.seeds, args.cost_seconds = CONFIGS[:1], 4_096, 2, 0.2

    import torch

    torch.set_num_threads(1)
    from mfha import ModelConfig, TrainConfig, count_parameters
    from mfha.cost import measure_cost
    from mfha.data import load_data
    from mfha.train import train
    from search.results.stats import paired_interval

    steps = max(1, -(-args.tokens // (BATCH * SEQ_LEN)))
    base_tc = TrainConfig(
        dataset=args.dataset,
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
    data = load_data(base_tc)
    vocab = data.tokenizer.vocab_size
    seeds = list(range(1, args.seeds + 1))
    t0 = time.perf_counter()
    pairs, lines = [], []
    for name, n_layers, dim, heads in configs:
        specs = heads if isinstance(heads, list) else [heads]
        variants = {"mixed": heads, **{f"twin {s}": twin_heads(heads, s) for s in twin_sizes(specs, SPACE_SIZES)}}
        results = {}
        for label, h in variants.items():
            mc = ModelConfig(vocab_size=vocab, dim=dim, n_layers=n_layers, heads=h, max_seq_len=SEQ_LEN, mlp_mult=4.0)
            values = []
            for seed in seeds:
                tc = TrainConfig.from_dict({**base_tc.to_dict(), "seed": seed})
                values.append(float(train(mc, tc, data=data).metrics["val_bpc"]))
            cost = measure_cost(mc, base_tc, "train", seconds=args.cost_seconds, min_rounds=2).ratio
            results[label] = {"heads": describe(h), "params": count_parameters(mc), "values": values, "cost": cost}
        mixed = results["mixed"]
        lines.append(f"\n{name} (dim {dim}, {n_layers} layers), {args.tokens:,} tokens a run, seeds {seeds}:")
        lines.append("| variant | heads | params | val_bpc by seed | mean | train_cost | mixed - twin (95%, paired) |")
        lines.append("| --- | --- | --- | --- | --- | --- | --- |")
        for label, r in results.items():
            diff = ""
            if label != "mixed":
                iv = paired_interval(mixed["values"], r["values"])
                diff = f"{iv.mean:+.4f} ({iv.low:+.4f} to {iv.high:+.4f})"
                pairs.append(
                    {
                        "config": name,
                        "twin": r["heads"],
                        "diff": round(iv.mean, 5),
                        "low": round(iv.low, 5),
                        "high": round(iv.high, 5),
                        "cost_ratio": round(mixed["cost"] / r["cost"], 4),
                    }
                )
            by_seed = ", ".join(f"{v:.4f}" for v in r["values"])
            lines.append(
                f"| {label} | {r['heads']} | {r['params']:,} | {by_seed} | {statistics.fmean(r['values']):.4f} | "
                f"{r['cost']:.3f} | {diff} |"
            )
    print("\n".join(lines))
    wins = sum(p["high"] < 0 for p in pairs)
    losses = sum(p["low"] > 0 for p in pairs)
    print(
        f"\n{len(pairs)} mixed-vs-twin pairs: mixed better beyond seed noise in {wins}, worse in {losses}, "
        f"within it in {len(pairs) - wins - losses}; mixed/twin train_cost "
        f"{min(p['cost_ratio'] for p in pairs):.2f}..{max(p['cost_ratio'] for p in pairs):.2f}; "
        f"{time.perf_counter() - t0:.0f} s"
    )
    print(json.dumps({"bench": "twins", "pairs": pairs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
