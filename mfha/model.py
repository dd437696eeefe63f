"""The MFHA GPT: a decoder whose attention layers mix heads of different sizes.

Shapes: B batch, T time, C channels (dim), nh heads, hs head size, g a group of heads of one size.
Heads of one size form a group that takes one `scaled_dot_product_attention` call, so a layer costs
one call per distinct size, never one per head.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from mfha.config import ModelConfig
from mfha.heads import HeadSpec

# The CPU flash-attention kernel costs more per head below head size ~12-16 than at 16 (fwd+bwd,
# B8 T256: ~6 ms per head of 8, ~4 ms per head of 16), so on CPU the full-sequence pass (not cached
# decoding) runs smaller heads zero-padded to 16: zeros add nothing to q.k, the padded output
# columns are dropped, and the softmax scale stays 1/sqrt(true size). See bench/attention.py.
CPU_MIN_KERNEL_HEAD = 16


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)


def rope_tables(head_sizes: list[int], max_seq_len: int, base: float) -> torch.Tensor:
    """cos and sin stacked, (max_seq_len, sum(head_sizes) // 2, 2), each head rotated at its own size.

    Interleaved pairs (2j, 2j+1) keep every head's pairs inside its own channels, so one
    elementwise op rotates a whole row of mixed-size heads.
    """
    # heads share frequencies (every head of a size, and 2j/hs == j/(hs/2) across sizes), and float64
    # sin/cos is slow, so each distinct exponent 2j/hs is evaluated once
    exponents = [Fraction(2 * j, hs) for hs in head_sizes for j in range(hs // 2)]
    distinct = sorted(set(exponents))
    position = {e: i for i, e in enumerate(distinct)}
    index = torch.tensor([position[e] for e in exponents])
    inv_freq = base ** -torch.tensor([float(e) for e in distinct], dtype=torch.float64)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)
    return torch.stack((angles.cos(), angles.sin()), dim=-1)[:, index].float()


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    # x (B, T, W); table (T, W/2, 2) of cos, sin. Rotating the pair (x0, x1) is multiplying x0 + i*x1
    # by cos + i*sin: one complex op forward and one backward, ~4x faster on CPU than the real form
    xf = x if x.dtype in (torch.float32, torch.float64) else x.float()  # no complex bf16 kernels
    xc = torch.view_as_complex(xf.unflatten(-1, (-1, 2)))
    return torch.view_as_real(xc * torch.view_as_complex(table.to(xf.dtype))).flatten(-2).to(x.dtype)


class KVCache:
    """Rotated keys and values of one layer for incremental decoding, preallocated to max length."""

    def __init__(self, batch_size: int, max_len: int, kv_width: int, *, device, dtype) -> None:
        self.k = torch.zeros(batch_size, max_len, kv_width, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        T = k.size(1)
        end = self.length + T
        if end > self.k.size(1):
            raise ValueError(f"KV cache holds {self.k.size(1)} positions, but {end} were asked for")
        self.k[:, self.length : end] = k
        self.v[:, self.length : end] = v
        self.length = end
        return self.k[:, :end], self.v[:, :end]


class MFHAttention(nn.Module):
    rope: torch.Tensor  # a buffer: nn.Module's own typing makes every attribute a Tensor | Module

    def __init__(self, config: ModelConfig, spec: HeadSpec) -> None:
        super().__init__()
        # (hs, nh, n_kv) per size group, largest size first
        self.groups = [(hs, n, config.kv_heads(n)) for hs, n in spec.groups()]
        self.q_width = sum(hs * n for hs, n, _ in self.groups)
        self.kv_width = sum(hs * n_kv for hs, _, n_kv in self.groups)
        self.q_splits = [hs * n for hs, n, _ in self.groups]
        self.kv_splits = [hs * n_kv for hs, _, n_kv in self.groups]
        self.qkv = nn.Linear(config.dim, self.q_width + 2 * self.kv_width, bias=False)
        self.proj = nn.Linear(self.q_width, config.dim, bias=False)
        # q and k sit side by side in the qkv output, so one table rotates both in one op
        head_sizes = [hs for hs, n, _ in self.groups for _ in range(n)] + [
            hs for hs, _, n_kv in self.groups for _ in range(n_kv)
        ]
        self.register_buffer("rope", rope_tables(head_sizes, config.max_seq_len, config.rope_base), persistent=False)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        start = cache.length if cache is not None else 0
        qk, v = self.qkv(x).split([self.q_width + self.kv_width, self.kv_width], dim=-1)
        qk = apply_rope(qk, self.rope[start : start + T])
        if cache is None:
            # split, not slicing: its backward is one cat, where each slice's would zero-fill a full-size grad
            qs = qk.split(self.q_splits + self.kv_splits, dim=-1)
            qs, ks = qs[: len(self.groups)], qs[len(self.groups) :]
        else:
            q, k = qk.split([self.q_width, self.kv_width], dim=-1)
            k, v = cache.append(k, v)
            qs, ks = q.split(self.q_splits, dim=-1), k.split(self.kv_splits, dim=-1)
        vs = v.split(self.kv_splits, dim=-1)
        Tk = v.size(1)
        # SDPA's is_causal aligns the mask top-left, which is only right when there is no past
        mask = None
        if start > 0 and T > 1:
            mask = torch.ones(T, Tk, dtype=torch.bool, device=x.device).tril(diagonal=start)
        outs = []
        for (hs, n, n_kv), qg, kg, vg in zip(self.groups, qs, ks, vs):
            qg = qg.view(B, T, n, hs).transpose(1, 2)  # (B, nh_g, T, hs)
            kg = kg.view(B, Tk, n_kv, hs).transpose(1, 2)  # (B, n_kv, Tk, hs)
            vg = vg.view(B, Tk, n_kv, hs).transpose(1, 2)
            pad = CPU_MIN_KERNEL_HEAD - hs if x.device.type == "cpu" and cache is None else 0
            if pad > 0:
                qg, kg, vg = (F.pad(z, (0, pad)) for z in (qg, kg, vg))
            yg = F.scaled_dot_product_attention(
                qg, kg, vg, attn_mask=mask, is_causal=start == 0 and T > 1, scale=hs**-0.5, enable_gqa=n_kv != n
            )
            outs.append(yg[..., :hs].transpose(1, 2).reshape(B, T, n * hs))
        y = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)  # (B, T, q_width)
        return self.proj(y)


class SwiGLU(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.mlp_hidden is None:
            raise TypeError("ModelConfig.mlp_hidden is None, but ModelConfig.__post_init__ sets it.")
        self.gate_up = nn.Linear(config.dim, 2 * config.mlp_hidden, bias=False)
        self.down = nn.Linear(config.mlp_hidden, config.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, config: ModelConfig, spec: HeadSpec) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.dim, config.norm_eps)
        self.attn = MFHAttention(config, spec)
        self.mlp_norm = RMSNorm(config.dim, config.norm_eps)
        self.mlp = SwiGLU(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cache)
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.dim)
        if config.layer_heads is None:
            raise TypeError("ModelConfig.layer_heads is None, but ModelConfig.__post_init__ sets it.")
        self.blocks = nn.ModuleList(Block(config, spec) for spec in config.layer_heads)
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # tied
        self.apply(self._init_weights)
        # GPT-2: scale residual projections by 1/sqrt(2 * n_layers) so the residual stream stays O(1)
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.down.weight")):
                nn.init.normal_(p, mean=0.0, std=config.init_std / math.sqrt(2 * config.n_layers))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, caches: list[KVCache] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        _, T = idx.shape
        start = caches[0].length if caches else 0
        if start + T > self.config.max_seq_len:
            raise ValueError(f"sequence of length {start + T} is longer than max_seq_len={self.config.max_seq_len}")
        x = self.tok_emb(idx)  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, caches[i] if caches else None)
        x = self.norm(x)
        if targets is None:
            return self.lm_head(x), None
        logits = self.lm_head(x)  # (B, T, vocab)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def new_caches(self, batch_size: int, *, device=None, dtype=None) -> list[KVCache]:
        p = self.tok_emb.weight
        return [
            KVCache(
                batch_size,
                self.config.max_seq_len,
                cast(Block, block).attn.kv_width,  # nn.ModuleList's typing yields plain Modules
                device=device or p.device,
                dtype=dtype or p.dtype,
            )
            for block in self.blocks
        ]


def count_parameters(config: ModelConfig) -> int:
    """Exact parameter count of `GPT(config)` from the config alone (no tensors built)."""
    C = config.dim
    if config.layer_heads is None or config.mlp_hidden is None:
        raise TypeError("ModelConfig.layer_heads or mlp_hidden is None, but ModelConfig.__post_init__ sets both.")
    total = config.vocab_size * C + C  # tied embedding/output, final norm
    for spec in config.layer_heads:
        q_width = sum(hs * n for hs, n in spec.groups())
        kv_width = sum(hs * config.kv_heads(n) for hs, n in spec.groups())
        total += 2 * C  # two norms
        total += C * (q_width + 2 * kv_width) + q_width * C  # qkv, proj
        total += 3 * C * config.mlp_hidden  # gate_up, down
    return total


__all__ = [
    "GPT",
    "Block",
    "KVCache",
    "MFHAttention",
    "RMSNorm",
    "SwiGLU",
    "apply_rope",
    "count_parameters",
    "rope_tables",
]
