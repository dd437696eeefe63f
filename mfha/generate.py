"""Sampling with the KV cache.

python -m mfha.generate runs/NAME "Once upon a time" --max-new-tokens 200 --temperature 0.8 --top-k 50 --top-p 0.95 --seed 1
"""

from __future__ import annotations

import argparse
import sys

import torch

from mfha.errors import ConfigError, MFHAError
from mfha.model import GPT


def _filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    # logits (B, V)
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token once the mass before it already reaches top_p; the first token always stays
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return logits


@torch.no_grad()
def generate(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
) -> torch.Tensor:
    """Extend idx (B, T) by up to max_new_tokens sampled tokens; stops early when every row emitted eos_id."""
    max_len = model.config.max_seq_len
    device = idx.device
    caches = model.new_caches(idx.size(0))
    context = idx[:, -max_len:]
    logits, _ = model(context, caches=caches)
    out = idx
    finished = torch.zeros(idx.size(0), dtype=torch.bool, device=device)
    for _ in range(max_new_tokens):
        last = logits[:, -1, :].float()
        if temperature <= 0:
            nxt = last.argmax(-1, keepdim=True)
        else:
            probs = _filter_logits(last / temperature, top_k, top_p).softmax(-1)
            nxt = torch.multinomial(probs.cpu(), 1, generator=generator).to(device)
        out = torch.cat([out, nxt], dim=1)
        if eos_id is not None:
            finished |= nxt.squeeze(1) == eos_id
            if finished.all():
                break
        if caches[0].length == max_len:
            # cache full: re-read the last half of the context (RoPE is relative, so positions restart)
            caches = model.new_caches(idx.size(0))
            logits, _ = model(out[:, -(max_len // 2) :], caches=caches)
        else:
            logits, _ = model(nxt, caches=caches)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m mfha.generate",
        description="Sample text from a trained run folder.",
        epilog='example: python -m mfha.generate runs/smoke "Once upon a time" --max-new-tokens 200 --temperature 0.8 --top-k 50 --top-p 0.95 --seed 1',
    )
    p.add_argument("run", help="run folder written by python -m mfha.train")
    p.add_argument("prompt", help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 means greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None, help="fixes the sampling for repeatable output")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    args = p.parse_args(argv)
    try:
        if args.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be >= 1, but got {args.max_new_tokens}.")
        if args.temperature < 0:
            raise ConfigError(f"--temperature must be >= 0, but got {args.temperature}.")
        if args.top_k is not None and args.top_k < 1:
            raise ConfigError(f"--top-k must be >= 1, but got {args.top_k}.")
        if args.top_p is not None and not 0 < args.top_p <= 1:
            raise ConfigError(f"--top-p must be in (0, 1], but got {args.top_p}.")
        from mfha.train import load_run

        model, tokenizer, _, _ = load_run(args.run, args.device)
        device = next(model.parameters()).device
        ids = tokenizer.encode(args.prompt)
        if not ids:
            raise ConfigError("the prompt is empty; pass some text to continue.")
        generator = torch.Generator().manual_seed(args.seed) if args.seed is not None else None
        idx = torch.tensor([ids], dtype=torch.long, device=device)
        out = generate(
            model,
            idx,
            args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            generator=generator,
            eos_id=tokenizer.eos_id,
        )
    except MFHAError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    new = [t for t in out[0, len(ids) :].tolist() if t != tokenizer.eos_id]
    print(args.prompt + tokenizer.decode(new))
    return 0


if __name__ == "__main__":
    sys.exit(main())
