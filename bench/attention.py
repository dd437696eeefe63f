"""Forward+backward time of one MFHA attention block against plain MHA at equal total head width.

Variants per shape (total head width W = hd * levels for all of them):
- mha: `MFHAttention` with a uniform spec of 2*levels heads of hd/2 (one SDPA call);
- mfha_fractal: fractal(hd, levels), one SDPA call per distinct size;
- mfha_geometric: geometric(hd/2 .. hd/2**levels, width=hd per level), smaller heads, more of them;
- seed_loop: the original fractal-head code's shape of work, explicit matmul/softmax per level
  (no RoPE, so the baseline is if anything flattered);
- *_sdpa: only the attention-kernel calls of the variant, against MHA's. Every head pays its own
  T x T softmax (fractal 1+2+4 = 7 heads against MHA's 6), so this is the part of the gap that no
  rearranging of the rest of the block removes.

Usage: python bench/attention.py [--quick] [--device auto|cpu|cuda] [--threads N] [--clock wall|cpu]
The last line is JSON: ratio_vs_mha and speedup_vs_seed_loop for the fractal mix at the headline
shape (the first one listed: B8 T256 on CPU, B16 T1024 bf16 on CUDA).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mfha import ModelConfig, fractal, geometric, uniform
from mfha.model import CPU_MIN_KERNEL_HEAD, MFHAttention

# (B, T, dim, hd, levels); the first of each list is the headline shape
CPU_SHAPES = [(8, 256, 256, 64, 3), (8, 256, 128, 32, 3), (4, 512, 256, 64, 3)]
CUDA_SHAPES = [(16, 1024, 512, 128, 4), (64, 256, 256, 64, 3), (8, 4096, 1024, 256, 4)]
QUICK_SHAPES = [(2, 64, 64, 32, 3)]


class SeedLoop(nn.Module):
    """Level i of width hd splits into split**i heads; every head scaled by the base width hd."""

    def __init__(self, dim: int, hd: int, levels: int, split: int = 2) -> None:
        super().__init__()
        self.hd, self.levels, self.split = hd, levels, split
        self.qkv = nn.Linear(dim, 3 * hd * levels, bias=False)
        self.proj = nn.Linear(hd * levels, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.levels, self.hd).unbind(2)
        mask = torch.full((T, T), float("-inf"), device=x.device, dtype=x.dtype).triu(1)
        outs = []
        for i in range(self.levels):
            nh = self.split**i
            hs = self.hd // nh
            qi, ki, vi = (z[:, :, i].reshape(B, T, nh, hs).transpose(1, 2) for z in (q, k, v))
            att = (qi @ ki.transpose(2, 3)) * self.hd**-0.5 + mask
            outs.append((F.softmax(att.float(), dim=-1).to(x.dtype) @ vi).transpose(1, 2).reshape(B, T, self.hd))
        return self.proj(torch.cat(outs, dim=-1))


def variants(dim: int, T: int, hd: int, levels: int) -> dict[str, tuple[str, nn.Module]]:
    specs = {
        "mha": uniform(2 * levels, hd // 2),
        "mfha_fractal": fractal(hd, levels),
        "mfha_geometric": geometric(hd // 2, hd // 2**levels, width=hd),
    }
    out = {}
    for name, spec in specs.items():
        assert spec.total_width == hd * levels, (name, spec.render())
        cfg = ModelConfig(vocab_size=8, dim=dim, n_layers=1, heads=spec, max_seq_len=T)
        out[name] = (spec.render(), MFHAttention(cfg, spec))
    out["seed_loop"] = (f"{levels} levels of {hd}", SeedLoop(dim, hd, levels))
    return out


class KernelOnly(nn.Module):
    """Only the SDPA calls an MFHAttention makes (one per size group, small heads padded on CPU):
    the floor for the module, since the projections and RoPE cost the same at equal width."""

    def __init__(self, attn: MFHAttention, B: int, T: int, device: str, dtype: torch.dtype) -> None:
        super().__init__()
        self.calls = []
        for hs, n, _ in attn.groups:
            width = max(hs, CPU_MIN_KERNEL_HEAD) if device == "cpu" else hs
            qkv = [torch.randn(B, n, T, width, device=device, dtype=dtype, requires_grad=True) for _ in range(3)]
            self.calls.append((qkv, hs**-0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(F.scaled_dot_product_attention(*qkv, is_causal=True, scale=scale).sum() for qkv, scale in self.calls)


def step(m: nn.Module, x: torch.Tensor) -> None:
    m(x).float().sum().backward()


def time_all(
    mods: dict[str, nn.Module], x: torch.Tensor, *, iters: int, rounds: int, clock=time.perf_counter
) -> dict[str, float]:
    """Median seconds per fwd+bwd; variants interleaved round by round so load drift hits all alike."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    for m in mods.values():
        for _ in range(2):
            step(m, x)
    samples: dict[str, list[float]] = {k: [] for k in mods}
    for _ in range(rounds):
        for name, m in mods.items():
            sync()
            t = clock()
            for _ in range(iters):
                step(m, x)
            sync()
            samples[name].append((clock() - t) / iters)
    return {k: statistics.median(v) for k, v in samples.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one tiny shape, few iterations (smoke test)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--rounds", type=int, default=None, help="timing rounds per variant (median is kept)")
    ap.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default: torch's); 1 is steadier on a busy machine"
    )
    ap.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "cpu"],
        help="cpu: process CPU time, steady on a shared machine when used with --threads 1 (CPU only)",
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if args.clock == "cpu" and device == "cuda":
        ap.error("--clock cpu measures CPU work; GPU kernels run asynchronously, use --clock wall")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    shapes = QUICK_SHAPES if args.quick else (CUDA_SHAPES if device == "cuda" else CPU_SHAPES)
    iters, rounds = (1, 3) if args.quick else (3, 7)
    rounds = args.rounds or rounds
    torch.manual_seed(0)
    name = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}, dtype: {str(dtype).removeprefix('torch.')}, torch {torch.__version__}, clock: {args.clock}")
    print(f"{'shape':<28} {'variant':<20} {'heads':<18} {'ms':>9} {'x mha':>7}")
    headline = None
    for B, T, dim, hd, levels in shapes:
        built = variants(dim, T, hd, levels)
        mods = {k: m.to(device, dtype) for k, (_, m) in built.items()}
        for k in ("mha", "mfha_fractal", "mfha_geometric"):
            mods[f"{k}_sdpa"] = KernelOnly(mods[k], B, T, device, dtype)
            built[f"{k}_sdpa"] = ("sdpa calls only", None)
        x = torch.randn(B, T, dim, device=device, dtype=dtype, requires_grad=True)
        res = time_all(mods, x, iters=iters, rounds=rounds, clock=clock)
        shape = f"B{B} T{T} dim{dim}"
        for k, t in res.items():
            base = res["mha_sdpa" if k.endswith("_sdpa") else "mha"]
            print(f"{shape:<28} {k:<20} {built[k][0]:<18} {t * 1e3:9.2f} {t / base:7.2f}")
        if headline is None:
            headline = (res["mfha_fractal"] / res["mha"], res["seed_loop"] / res["mfha_fractal"])
    ratio, speedup = headline
    print(
        json.dumps(
            {
                "bench": "attention",
                "device": device,
                "ratio_vs_mha": round(ratio, 3),
                "speedup_vs_seed_loop": round(speedup, 3),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
