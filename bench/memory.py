"""Forecast vs measured peak training memory over varied configurations.

Each row: `estimate_training_peak` (analytic, no tensors) against `measure_training_peak` (real AdamW
steps in a fresh child process: peak RSS on CPU, `max_memory_allocated` on CUDA). The configs vary
depth, width, head mix (uniform, fractal, geometric, explicit, per-layer, grouped K/V), batch,
sequence length, vocabulary and MLP width; several keep > 200 MB of activations so the model's part is
not hidden behind the framework baseline.

Usage: python bench/memory.py [--quick] [--device auto|cpu|cuda] [--steps 3]
The last line is JSON: configs, worst_over and worst_under as forecast / measured - 1.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mfha import ModelConfig, TrainConfig, count_parameters, explicit, fractal, geometric, uniform  # noqa: E402
from mfha.memory import forecast_parts, framework_baseline_bytes, measure_training_peak  # noqa: E402

# name -> (ModelConfig kwargs, batch_size, seq_len)
CONFIGS: dict[str, tuple[dict, int, int]] = {
    "tiny": (dict(vocab_size=256, dim=64, n_layers=2, heads=uniform(4, 16), max_seq_len=64), 8, 64),
    "fractal": (dict(vocab_size=256, dim=96, n_layers=4, heads=fractal(32, 3), max_seq_len=256), 16, 256),
    "geometric": (dict(vocab_size=512, dim=96, n_layers=3, heads=geometric(32, 8, count=2), max_seq_len=512), 8, 512),
    "explicit": (dict(vocab_size=1024, dim=128, n_layers=3, heads=explicit([48, 32, 16, 16, 8, 8]), max_seq_len=128), 8, 128),
    "per_layer": (dict(vocab_size=256, dim=128, n_layers=4, max_seq_len=256, heads=[
        uniform(4, 32), fractal(64, 3), geometric(32, 8, width=32), explicit([48, 32, 16, 16, 8])]), 8, 256),
    "gqa_fractal": (dict(vocab_size=2048, dim=128, n_layers=4, heads=fractal(64, 4), kv_share=2, max_seq_len=256), 4, 256),
    "gqa_uniform": (dict(vocab_size=1024, dim=96, n_layers=3, heads=uniform(6, 16), kv_share=3, max_seq_len=256), 16, 256),
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
    "small_per_layer": (dict(vocab_size=1024, dim=64, n_layers=2, max_seq_len=128, heads=[
        uniform(2, 32), geometric(32, 8, width=32)]), 8, 128),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)} (a smoke run)")
    ap.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--steps", type=int, default=3, help="training steps per measurement")
    args = ap.parse_args(argv)
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
    print(json.dumps({
        "bench": "memory", "device": device, "configs": len(errors),
        "worst_over": round(max(0.0, max(errors)), 4), "worst_under": round(min(0.0, min(errors)), 4),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
