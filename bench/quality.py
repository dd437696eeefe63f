"""Issue-3 quality check: ~0.9M-parameter fractal MFHA, character level, 5 minutes of CPU wall time.

    python bench/quality.py [--minutes 5] [--out runs/quality]

Prints the validation curve and the final bits/char on a large fixed set of validation windows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mfha import ModelConfig, TrainConfig, count_parameters, fractal
from mfha.evaluate import evaluate_run
from mfha.train import train

DATASET = str(Path(__file__).resolve().parents[2] / "shared/data/tinystories")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--out", default="runs/quality")
    p.add_argument("--dataset", default=DATASET)
    p.add_argument("--final-windows", type=int, default=512, help="validation windows for the final figure")
    args = p.parse_args()
    model_config = ModelConfig(dim=128, n_layers=4, heads=fractal(64, 3), max_seq_len=128, mlp_mult=4.0)
    tc = TrainConfig(
        dataset=args.dataset,
        batch_size=16,
        seq_len=128,
        max_steps=1_000_000,
        max_time_s=args.minutes * 60,
        lr=args.lr,
        warmup_steps=100,
        min_lr_ratio=0.05,
        eval_interval=200,
        eval_windows=128,
        device="cpu",
    )
    result = train(model_config, tc, out_dir=args.out)
    print(f"model: {count_parameters(result.model_config):,} parameters, heads {result.model_config.describe_heads()}")
    print(f"{'step':>6s} {'elapsed_s':>9s} {'train_loss':>10s} {'val_bpc':>8s} {'tok/s':>7s}")
    for m in result.history:
        print(
            f"{m['step']:6d} {m['elapsed_s']:9.1f} {m['train_loss']:10.4f} {m['val_bpc']:8.4f} {m['tokens_per_s']:7.0f}"
        )
    final = evaluate_run(args.out, windows=args.final_windows)
    print(
        f"final on {args.final_windows} validation windows: val_bpc {final['val_bpc']:.4f}, top1 {final['top1_acc']:.3f}"
    )
    print(
        json.dumps(
            {
                "bench": "quality",
                "steps": result.steps,
                "wall_s": round(result.history[-1]["elapsed_s"], 1),
                "val_bpc": round(final["val_bpc"], 4),
                "target": 1.80,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
