"""Training memory: an analytic forecast of the peak, and a measurement of it in a fresh process.

`estimate_training_peak` builds no tensor, so a search can drop a configuration before allocating it.
On CPU it forecasts the peak resident set size (RSS) of the whole training process, framework
baseline included; on CUDA the peak of `torch.cuda.max_memory_allocated` (tensors only: neither the
CUDA context nor the caching allocator's reserve is in that figure).

Sizes below: B batch, T time, N = B*T tokens, C dim, V vocab, H SwiGLU hidden, P parameters;
for a layer qw/kvw are the query and K/V widths (sums of head sizes).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import torch

from mfha.config import ModelConfig, TrainConfig
from mfha.errors import ConfigError
from mfha.heads import HeadSpec
from mfha.model import CPU_MIN_KERNEL_HEAD, GPT

FP32 = 4
BF16 = 2
INDEX = 8  # int64 token ids

# glibc serves requests of 32 MiB and more with mmap and unmaps them on free, so those stay exact;
# smaller tensors come from its heap once the dynamic mmap threshold has risen, and the holes that
# freed ones leave stay resident. HEAP_SLACK, for the tensors kept all run (weights, RoPE tables,
# AdamW state), was fitted with bench/memory.py on torch 2.13 CPU (glibc, 2 threads). STEP_SLACK is
# for the tensors made and freed every step (activations, grads, temporaries): the trainer's
# `_, loss = ...` keeps a step's logits until the next forward returns, so that forward cannot refill
# the holes in order (dropping them at the end of the step instead made a batch-64 0.5M-parameter
# trial peak 78 MiB lower). Fitted on bench/memory.py's 16 fresh-process configs (8 steps) for the
# widest margin to -5%..+10%, which left them within -2.5%..+5.0%; checked, not fitted, on real
# trial processes (bench/memory.py --trials).
MMAP_MAX = 32 * 2**20
HEAP_SLACK = 1.25
STEP_SLACK = 1.36


def estimate_training_peak(
    model_config: ModelConfig,
    train_config: TrainConfig,
    device: str | torch.device = "cpu",
    *,
    baseline_bytes: int | None = None,
) -> int:
    """Forecast of the peak memory of training `model_config` with `train_config`, in bytes.

    CPU: peak RSS of the whole process, the framework baseline (torch + mfha imported, tiny AdamW
    steps taken) included; pass `baseline_bytes` to skip measuring it once in a fresh subprocess, or
    where the training process is not a fresh one: a process forked from one that has torch loaded
    counts only the pages it touches itself (the search passes its trial processes' own baseline).
    CUDA: peak of `torch.cuda.max_memory_allocated` with bf16 autocast.
    Eager mode; the trainer's token streams and a torch.compile cache are not counted.
    """
    return forecast_parts(model_config, train_config, device, baseline_bytes=baseline_bytes)["peak"]


Tensors = list[tuple[int, int]]  # (bytes of one tensor, how many such tensors)


def forecast_parts(
    model_config: ModelConfig,
    train_config: TrainConfig,
    device: str | torch.device = "cpu",
    *,
    baseline_bytes: int | None = None,
) -> dict[str, int]:
    """The forecast's terms in bytes: baseline, weights, grads, optimizer, activations, transient, peak."""
    kind = _device_kind(device)
    _check_seq_len(model_config, train_config)
    mc, B, T = model_config, train_config.batch_size, train_config.seq_len
    N, C, H, V = B * T, mc.dim, _mlp_hidden(mc), mc.vocab_size
    params = _param_tensors(mc)
    weights = [(n * FP32, k) for n, k in params] + _rope_tensors(mc)
    grads = [(n * FP32, k) for n, k in params]
    adam = [(n * FP32, 2 * k) for n, k in params]  # AdamW's exp_avg and exp_avg_sq, fp32 like the weights
    largest = max(n for n, _ in params) * FP32
    if kind == "cpu":
        acts = _activations_cpu(mc, B, T)
        # backward opens with the cross-entropy chain, d(nll) and d(log_softmax), both (N, V) fp32;
        # a block's backward later holds a few grads at once, after those are freed: a few (N, H) in
        # the MLP; in attention the grads of q, k and v and the one of the fused qkv output they are
        # joined into, 2 x (N, qw + 2 kvw), which is the larger where the heads are wider than the MLP
        loss_grads = [(N * V * FP32, 2)]
        mlp_grads = [(N * H * FP32, 5), (N * C * FP32, 2)]
        attn_grads = [[(N * (qw + 2 * kvw) * FP32, 2), (N * C * FP32, 2)] for _, qw, kvw, _ in _layers(mc)]
        backward_transient = max([loss_grads, mlp_grads, *attn_grads], key=_total)
        # single-tensor AdamW (the CPU default) makes two temporaries the size of one parameter; the
        # caller still holds the step's logits
        step_transient = [(largest, 2), (N * V * FP32, 1)]
        baseline = framework_baseline_bytes() if baseline_bytes is None else int(baseline_bytes)
        resident = _resident_cpu
    else:
        # autocast keeps a bf16 copy of every matmul weight (the tied embedding included) until backward
        acts = _activations_cuda(mc, B, T) + [(n * BF16, k) for n, k in _param_tensors(mc, norms=False)]
        loss_grads = [(N * V * FP32, 2), (N * V * BF16, 1)]  # then the bf16 grad of the logits
        block_grads = [(N * H * BF16, 5), (N * C * FP32, 2)]
        backward_transient = max(loss_grads, block_grads, key=_total)
        # mfha.train asks for fused AdamW on CUDA, which updates in place; the caller holds the logits
        step_transient = [(N * V * BF16, 1)]
        baseline = 0
        resident = _resident_cuda
    # Backward frees activations while it fills the grads, so the model's peak is at one of the ends:
    # the start of a backward (weights, AdamW state, every saved activation, the loss grads) or the
    # optimizer step (weights, grads, AdamW state, the step's temporaries).
    start_of_backward = resident(weights + adam, acts + backward_transient)
    optimizer_step = resident(weights + adam, grads + step_transient)
    return {
        "baseline": baseline,
        "weights": _total(weights),
        "grads": _total(grads),
        "optimizer": _total(adam),
        "activations": _total(acts),
        "transient": max(_total(backward_transient), _total(step_transient)),
        "peak": baseline + max(start_of_backward, optimizer_step),
    }


def _total(tensors: Tensors) -> int:
    return sum(n * k for n, k in tensors)


def _resident_cpu(kept: Tensors, per_step: Tensors) -> int:
    return int(_heap(kept, HEAP_SLACK) + _heap(per_step, STEP_SLACK))


def _heap(tensors: Tensors, slack: float) -> float:
    return sum(n * k * (1 if n >= MMAP_MAX else slack) for n, k in tensors)


def _resident_cuda(kept: Tensors, per_step: Tensors) -> int:
    return _total(kept + per_step)  # max_memory_allocated counts tensor bytes, exactly


def _layers(mc: ModelConfig) -> list[tuple[HeadSpec, int, int, int]]:
    """(spec, qw, kvw, size groups) of each layer; qw is the spec's total width."""
    if mc.layer_heads is None:
        raise TypeError("ModelConfig.layer_heads is None, but ModelConfig.__post_init__ sets it.")
    out = []
    for spec in mc.layer_heads:
        groups = spec.groups()
        out.append((spec, spec.total_width, sum(hs * mc.kv_heads(n) for hs, n in groups), len(groups)))
    return out


def _mlp_hidden(mc: ModelConfig) -> int:
    if mc.mlp_hidden is None:
        raise TypeError("ModelConfig.mlp_hidden is None, but ModelConfig.__post_init__ sets it.")
    return mc.mlp_hidden


def _param_tensors(mc: ModelConfig, *, norms: bool = True) -> Tensors:
    """Element counts of the parameters, as in `count_parameters`."""
    C, H = mc.dim, _mlp_hidden(mc)
    out = [(mc.vocab_size * C, 1)]  # tied embedding / output head
    if norms:
        out.append((C, 1 + 2 * mc.n_layers))
    for _, qw, kvw, _ in _layers(mc):
        out += [(C * (qw + 2 * kvw), 1), (qw * C, 1), (2 * H * C, 1), (H * C, 1)]
    return out


def _rope_tensors(mc: ModelConfig) -> Tensors:
    # one (max_seq_len, (qw + kvw) / 2, 2) fp32 table of cos, sin per layer
    return [(mc.max_seq_len * (qw + kvw) * FP32, 1) for _, qw, kvw, _ in _layers(mc)]


def _activations_cpu(mc: ModelConfig, B: int, T: int) -> Tensors:
    """Tensors autograd keeps for backward, fp32, plus the logits that the caller holds."""
    N, C, H, V = B * T, mc.dim, _mlp_hidden(mc), mc.vocab_size
    out = [(N * C * FP32, 1), (2 * N * INDEX, 1)]  # embedding output (first residual); idx, targets
    for spec, qw, kvw, groups in _layers(mc):
        out += [
            (N * C * FP32, 2),  # the block's two residual-stream outputs
            (N * C * FP32, 4),
            (N * FP32, 4),  # each RMSNorm (composite on CPU): x/rms, its output, 1/rms
        ]
        # CPU SDPA with is_causal takes its flash kernel (with enable_gqa too): per size group it keeps
        # q, k, v, the output and the logsumexp, never a T x T matrix. Groups of heads below
        # CPU_MIN_KERNEL_HEAD are zero-padded first, so it keeps padded copies of them instead of
        # views into the qkv and RoPE outputs.
        views = False
        for hs, n in spec.groups():
            n_kv = mc.kv_heads(n)
            out.append((N * n * FP32, 1))  # logsumexp
            if hs >= CPU_MIN_KERNEL_HEAD:
                views = True
                out.append((N * n * hs * FP32, 1))  # output (B, T, n, hs) in memory: the reshape is a view
            else:
                pad = CPU_MIN_KERNEL_HEAD
                out += [(N * n * pad * FP32, 2), (N * n_kv * pad * FP32, 2)]  # padded q and output, k and v
                if groups == 1:
                    out.append((N * n * hs * FP32, 1))  # unpadded copy of the output, kept by the projection
        if views:
            # the fused qkv output (v is a view of it) and the rotated q, k (one complex op)
            out += [(N * (qw + 2 * kvw) * FP32, 1), (N * (qw + kvw) * FP32, 1)]
        if groups > 1:
            out.append((N * qw * FP32, 1))  # torch.cat of the groups, kept by the output projection
        out += [(N * 2 * H * FP32, 1), (N * H * FP32, 2)]  # gate_up output; silu(gate), silu(gate) * up
    out += [(N * C * FP32, 2), (N * FP32, 1)]  # final norm
    out += [(N * V * FP32, 2)]  # logits (held by the caller), log_softmax output (kept by nll_loss)
    return out


def _activations_cuda(mc: ModelConfig, B: int, T: int) -> Tensors:
    """Tensors kept for backward under bf16 autocast, SDPA flash kernel, fused RMSNorm."""
    N, C, H, V = B * T, mc.dim, _mlp_hidden(mc), mc.vocab_size
    out = [(N * C * FP32, 1), (2 * N * INDEX, 1)]  # embedding output: the residual stream stays fp32
    for spec, qw, kvw, groups in _layers(mc):
        out += [
            (N * C * FP32, 2),  # residual-stream outputs
            (N * FP32, 2),  # fused RMSNorm keeps its input (a residual) and 1/rms
            (N * C * BF16, 2),  # bf16 casts of both norm outputs, kept by their matmuls
            (N * (qw + 2 * kvw) * BF16, 1),  # qkv output (V is read from it)
            (N * qw * BF16, 1),
            (N * kvw * BF16, 1),  # RoPE outputs
            (N * 2 * H * BF16, 1),
            (N * H * BF16, 2),  # gate_up output, silu(gate), their product
        ]
        for hs, n in spec.groups():
            padded = -(-hs // 8) * 8  # flash pads head sizes to a multiple of 8 and keeps the padded copies
            if padded != hs:
                out.append((N * (padded * (n + 2 * mc.kv_heads(n))) * BF16, 1))
            out += [(N * n * padded * BF16, 1), (N * n * FP32, 1)]  # output and logsumexp
        if groups > 1:
            out.append((N * qw * BF16, 1))  # torch.cat of the size groups
    out += [(N * C * FP32, 1), (N * FP32, 1), (N * C * BF16, 1)]  # final norm's input and 1/rms, lm_head's input
    out += [(N * V * BF16, 1), (N * V * FP32, 1)]  # bf16 logits (held by the caller), fp32 log_softmax output
    return out


def _device_kind(device: str | torch.device) -> str:
    kind = device.type if isinstance(device, torch.device) else str(device).split(":")[0]
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind not in ("cpu", "cuda"):
        raise ConfigError(f"device must be cpu, cuda or auto, but got {device=}.")
    return kind


def _check_seq_len(mc: ModelConfig, tc: TrainConfig) -> None:
    if tc.seq_len > mc.max_seq_len:
        raise ConfigError(
            f"train seq_len must be <= the model's max_seq_len={mc.max_seq_len} (raise max_seq_len or "
            f"shorten seq_len), but got seq_len={tc.seq_len}."
        )


@functools.cache
def framework_baseline_bytes() -> int:
    """RSS of a fresh process that imported torch and mfha (mfha.train too) and took tiny AdamW steps.

    The step matters: AdamW's first use imports torch's compiler stack (about 70 MB on torch 2.13).
    """
    return _run_child({"mode": "baseline"})["rss"]


def measure_training_peak(
    model_config: ModelConfig,
    train_config: TrainConfig,
    device: str | torch.device = "cpu",
    *,
    steps: int = 3,
) -> int:
    """Peak memory of `steps` real AdamW training steps on random tokens, in bytes.

    Runs in a fresh child process so that the caller's own memory stays out of the figure. CPU: the
    child's peak RSS (VmHWM, whole process); CUDA: `torch.cuda.max_memory_allocated` in the child.
    """
    kind = _device_kind(device)
    _check_seq_len(model_config, train_config)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ConfigError(f"steps must be a positive integer, but got {steps=}.")
    return _run_child(
        {
            "mode": "measure",
            "device": kind,
            "steps": steps,
            "model": model_config.to_dict(),
            "train": train_config.to_dict(),
        }
    )["peak"]


def _run_child(request: dict[str, Any]) -> dict[str, Any]:
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(
        [sys.executable, "-c", "from mfha.memory import _child_main; _child_main()"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"memory measurement child exited with {proc.returncode}: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _child_main() -> None:
    request = json.loads(sys.stdin.read())
    if request["mode"] == "baseline":
        from mfha.heads import uniform

        mc = ModelConfig(vocab_size=32, dim=16, n_layers=1, heads=uniform(2, 8), max_seq_len=8)
        _train_steps(mc, TrainConfig(batch_size=2, seq_len=8), "cpu", steps=2)
        result = {"rss": vm_status("VmRSS") or _rss_now()}
    else:
        mc, tc = ModelConfig.from_dict(request["model"]), TrainConfig.from_dict(request["train"])
        sampler = _RssSampler() if vm_status("VmHWM") is None else None
        if request["device"] == "cuda":
            torch.cuda.reset_peak_memory_stats()
        _train_steps(mc, tc, request["device"], steps=request["steps"])
        if request["device"] == "cuda":
            peak = torch.cuda.max_memory_allocated()
        else:
            hwm = vm_status("VmHWM")
            if hwm:
                peak = hwm
            elif sampler is not None:
                peak = sampler.stop()
            else:  # AttributeError as `None.stop()` raised here before
                raise AttributeError("no VmHWM now, and no RSS sampler: VmHWM was there at the start")
        result = {"peak": peak}
    print(json.dumps(result))


def _train_steps(mc: ModelConfig, tc: TrainConfig, device: str, *, steps: int) -> None:
    """mfha.train's step on random tokens: forward with targets, backward, clip, AdamW, zero_grad."""
    from mfha.optim import make_optimizer, optimizer_step  # the trainer's own optimizer and step

    torch.manual_seed(tc.seed)
    model = GPT(mc).to(device)
    opt = make_optimizer(model, tc, torch.device(device))
    for _ in range(steps):
        x = torch.randint(0, mc.vocab_size, (tc.batch_size, tc.seq_len), device=device)
        y = torch.randint(0, mc.vocab_size, (tc.batch_size, tc.seq_len), device=device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            # bound like the trainer's `_, loss = ...`: the logits live on through the optimizer step
            # and the next step's forward, until the name is bound again (not `_` here: the loop rebinds
            # that before the next forward)
            _logits, loss = model(x, y)
        optimizer_step(model, opt, loss, tc.grad_clip)


def vm_status(field: str) -> int | None:
    # /proc/self/status VmHWM is this process's own peak RSS; ru_maxrss is not, since it survives
    # exec and so reports the parent's size in a child spawned from a big process
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:  # no /proc: not Linux, the caller samples instead
        return None
    return None


def _rss_now() -> int:
    import psutil

    return psutil.Process().memory_info().rss


class _RssSampler:
    """Peak RSS by sampling every millisecond, where the kernel offers no high-water mark."""

    def __init__(self) -> None:
        self.peak = _rss_now()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(0.001):
            self.peak = max(self.peak, _rss_now())

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return max(self.peak, _rss_now())


__all__ = ["estimate_training_peak", "forecast_parts", "framework_baseline_bytes", "measure_training_peak"]
