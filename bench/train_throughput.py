"""Trainer tokens/s vs a bare reference loop (same model, AdamW, same batches, no logging) on the CPU.

    python bench/train_throughput.py [--steps 150] [--rounds 3]

Runs alternate (reference, trainer, reference, trainer, ...) so load on the machine hits both alike;
the median of each is compared.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mfha import GPT, ModelConfig, TrainConfig, fractal
from mfha.data import load_data
from mfha.train import train

DATASET = str(Path(__file__).resolve().parents[2] / "shared/data/tinystories")
WARMUP = 10  # steps left out of both timings (first-call allocations, thread pool start)


def reference_tokens_per_s(model_config: ModelConfig, tc: TrainConfig, data, steps: int) -> float:
    torch.manual_seed(tc.seed)
    model = GPT(model_config)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=(tc.beta1, tc.beta2), weight_decay=tc.weight_decay)
    gen = torch.Generator().manual_seed(tc.seed)
    for i in range(steps + WARMUP):
        if i == WARMUP:
            t0 = time.perf_counter()
        x, y = data.batch(tc.batch_size, tc.seq_len, gen)
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return steps * tc.batch_size * tc.seq_len / (time.perf_counter() - t0)


def trainer_tokens_per_s(model_config: ModelConfig, tc: TrainConfig, data, steps: int) -> float:
    """Over the same `steps` steps the reference times: every evaluation window after the first, whose
    10 steps are the warm-up the reference leaves out too. A window's tokens/s counts training time
    only (the trainer stops its clock for evaluation), so the windows' times add up to the steps'."""
    result = train(
        model_config,
        TrainConfig.from_dict({**tc.to_dict(), "max_steps": WARMUP + steps, "eval_interval": WARMUP}),
        data=data,
    )
    timed = result.history[1:]
    tokens = [(m["step"] - before["step"]) * tc.batch_size * tc.seq_len for before, m in zip(result.history, timed)]
    assert sum(tokens) == steps * tc.batch_size * tc.seq_len, (len(result.history), steps)
    return sum(tokens) / sum(n / m["tokens_per_s"] for n, m in zip(tokens, timed))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dataset", default=DATASET)
    args = p.parse_args()
    model_config = ModelConfig(dim=128, n_layers=4, heads=fractal(64, 3), max_seq_len=128)
    tc = TrainConfig(
        dataset=args.dataset, batch_size=16, seq_len=128, lr=2e-3, warmup_steps=10, eval_windows=8, device="cpu"
    )
    data = load_data(tc)
    from dataclasses import replace

    model_config = replace(model_config, vocab_size=data.tokenizer.vocab_size)
    ref, ours = [], []
    for _ in range(args.rounds):
        ref.append(reference_tokens_per_s(model_config, tc, data, args.steps))
        ours.append(trainer_tokens_per_s(model_config, tc, data, args.steps))
    ref_med, ours_med = statistics.median(ref), statistics.median(ours)
    print(f"shape: dim=128 layers=4 heads={model_config.describe_heads()} B=16 T=128 threads={torch.get_num_threads()}")
    print(f"{'loop':12s} {'median tok/s':>12s}  runs")
    print(f"{'reference':12s} {ref_med:12.0f}  {', '.join(f'{v:.0f}' for v in ref)}")
    print(f"{'trainer':12s} {ours_med:12.0f}  {', '.join(f'{v:.0f}' for v in ours)}")
    print(
        json.dumps(
            {
                "bench": "train_throughput",
                "tokens_per_s": round(ours_med),
                "reference_tokens_per_s": round(ref_med),
                "ratio": round(ours_med / ref_med, 3),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
