"""A model's cost, as a ratio to a fixed reference model timed beside it: a speed figure that survives load.

The wall time of a step says as much about the machine's other work as about the model: the same
step varies 1.6x between runs of one bench, and two trials side by side slow each other 3-10x. Here
the model and a fixed reference model run alternately, in short rounds, in the same process on the
same device with the same threads, so a busy neighbour slows both alike; the ratio of their seconds
per token keeps what belongs to the model.

Which seconds: on the CPU with one torch thread, the process's CPU time, which a neighbour taking
turns on the core does not stretch (the reference still absorbs what it does change: clock speed,
caches shared with it); with several threads, wall time (CPU time there would count threads that
spin while they wait); on CUDA, wall time after a synchronize. Both ratios are kept.

    train:  forward + backward + optimizer step at the run's batch size and sequence length
    decode: greedy generation with the KV cache at batch 1

cost 1.0 = as many seconds per token as the reference (REFERENCE, trained at REFERENCE_BATCH x its
sequence length, decoding DECODE_TOKENS tokens); 2.0 = twice as slow.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal, get_args

import torch

from mfha.config import ModelConfig, TrainConfig
from mfha.heads import uniform
from mfha.model import GPT
from mfha.optim import make_optimizer, optimizer_step
from mfha.train import autocast_for, resolve_device

CostKind = Literal["train", "decode"]
COST_KINDS: tuple[str, ...] = get_args(CostKind)

# fixed for good: costs from different studies, machines and versions compare only against one reference
REFERENCE = ModelConfig(vocab_size=128, dim=64, n_layers=2, heads=uniform(4, 16), max_seq_len=128, mlp_mult=4.0)
REFERENCE_BATCH = 8
DECODE_TOKENS = 64  # generated per decode round, from a one-token prompt
ROUND_S = 0.05  # each side's share of a round, at least: short, so both see the same load
MAX_ROUNDS = 200


@dataclass(frozen=True)
class Cost:
    """One cost measurement: the median ratio over rounds, its spread, and the raw speeds beside it."""

    kind: CostKind
    clock: Literal["cpu", "wall"]  # which seconds `ratio` counts (see the module's docstring)
    ratio: float  # median over rounds of (model seconds per token) / (reference seconds per token)
    low: float  # the smallest and largest ratio of one round
    high: float
    wall_ratio: float  # the same median in wall time (equal to `ratio` when clock is "wall")
    model_tokens_per_s: float  # raw speeds (median over rounds): these move with the load, the ratio should not
    reference_tokens_per_s: float
    model_s: float  # seconds per unit of work (a training step, or DECODE_TOKENS generated), median
    reference_s: float
    rounds: int
    wall_s: float  # time spent measuring

    def to_dict(self) -> dict:
        return asdict(self)


def measure_cost(
    model_config: ModelConfig, train_config: TrainConfig, kind: CostKind, *, seconds: float = 2.0, min_rounds: int = 5
) -> Cost:
    """Time `model_config` against REFERENCE, interleaved, for about `seconds` (at least `min_rounds` rounds).

    `train_config` gives the device, batch size, sequence length and gradient clipping of the train
    kind. Runs in this process with its torch thread count.
    """
    if kind not in COST_KINDS:
        raise ValueError(f"kind must be one of {', '.join(COST_KINDS)}, but got {kind=}.")
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"seconds must be a positive number, but got {seconds=}.")
    if not (isinstance(min_rounds, int) and min_rounds >= 1):
        raise ValueError(f"min_rounds must be a positive integer, but got {min_rounds=}.")
    device = resolve_device(train_config.device)
    t0 = time.perf_counter()
    if kind == "train":
        model = _train_work(model_config, train_config.batch_size, train_config.seq_len, train_config, device)
        ref = _train_work(REFERENCE, REFERENCE_BATCH, REFERENCE.max_seq_len, train_config, device)
    else:
        model, ref = _decode_work(model_config, device), _decode_work(REFERENCE, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    clock: Literal["cpu", "wall"] = "cpu" if device.type == "cpu" and torch.get_num_threads() == 1 else "wall"
    for work in (model, ref):  # one-off costs (lazy init, allocator, thread pool) stay out of the rounds
        work()
        work()
    reps_m = _reps(_timed(model, 1, sync).wall)
    reps_r = _reps(_timed(ref, 1, sync).wall)
    rounds: list[tuple[_Timing, _Timing]] = []
    while len(rounds) < MAX_ROUNDS and (len(rounds) < min_rounds or time.perf_counter() - t0 < seconds):
        # alternate which side goes first, so a load that changes within a round hits both sides alike
        if len(rounds) % 2:
            r = _timed(ref, reps_r, sync)
            m = _timed(model, reps_m, sync)
        else:
            m = _timed(model, reps_m, sync)
            r = _timed(ref, reps_r, sync)
        rounds.append((m, r))
    ratios = [(getattr(m, clock) / m.tokens) / (getattr(r, clock) / r.tokens) for m, r in rounds]
    median = statistics.median
    return Cost(
        kind=kind,
        clock=clock,
        ratio=median(ratios),
        low=min(ratios),
        high=max(ratios),
        wall_ratio=median((m.wall / m.tokens) / (r.wall / r.tokens) for m, r in rounds),
        model_tokens_per_s=median(m.tokens / m.wall for m, _ in rounds),
        reference_tokens_per_s=median(r.tokens / r.wall for _, r in rounds),
        model_s=median(m.wall / reps_m for m, _ in rounds),
        reference_s=median(r.wall / reps_r for _, r in rounds),
        rounds=len(rounds),
        wall_s=time.perf_counter() - t0,
    )


def _reps(one: float) -> int:
    """Units of work per round so that a side takes about ROUND_S (a slow model: one unit)."""
    return max(1, math.ceil(ROUND_S / max(one, 1e-6)))


@dataclass(frozen=True)
class _Timing:
    wall: float  # seconds
    cpu: float  # this process's CPU seconds
    tokens: int


def _timed(work: Callable[[], int], reps: int, sync: Callable[[], None]) -> _Timing:
    """Wall and CPU seconds and tokens of `reps` units of work."""
    sync()
    t, c = time.perf_counter(), time.process_time()
    tokens = sum(work() for _ in range(reps))
    sync()
    return _Timing(time.perf_counter() - t, time.process_time() - c, tokens)


def _train_work(
    config: ModelConfig, batch_size: int, seq_len: int, tc: TrainConfig, device: torch.device
) -> Callable[[], int]:
    """One training step of a fresh model on fixed random tokens (the data pipeline is not the model's cost)."""
    torch.manual_seed(0)
    model = GPT(config).to(device)
    model.train()
    # a small lr: the weights stay ordinary numbers (no NaN or overflow slows the arithmetic down)
    optimizer = make_optimizer(model, TrainConfig.from_dict({**tc.to_dict(), "lr": 1e-5}), device)
    x = torch.randint(0, config.vocab_size, (batch_size, seq_len), device=device)
    y = torch.randint(0, config.vocab_size, (batch_size, seq_len), device=device)

    def step() -> int:
        with autocast_for(device):
            _, loss = model(x, y)
        optimizer_step(model, optimizer, loss, tc.grad_clip)
        return x.numel()

    return step


def _decode_work(config: ModelConfig, device: torch.device) -> Callable[[], int]:
    """DECODE_TOKENS greedy tokens with the KV cache at batch 1, from a one-token prompt."""
    from mfha.generate import generate

    torch.manual_seed(0)
    model = GPT(config).to(device).eval()
    prompt = torch.zeros((1, 1), dtype=torch.long, device=device)

    def decode() -> int:
        with autocast_for(device):
            generate(model, prompt, DECODE_TOKENS, temperature=0.0)
        return DECODE_TOKENS

    return decode


__all__ = ["COST_KINDS", "DECODE_TOKENS", "REFERENCE", "REFERENCE_BATCH", "Cost", "CostKind", "measure_cost"]
