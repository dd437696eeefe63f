"""The optimizer every training run uses, and its step (the trainer's, the memory measurement's, the cost's)."""

from __future__ import annotations

import torch

from mfha.config import TrainConfig
from mfha.model import GPT


def make_optimizer(model: GPT, tc: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    # decay matrices only: norms (1-D) keep their scale (nanoGPT, "Decoupled Weight Decay")
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": tc.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=tc.lr, betas=(tc.beta1, tc.beta2), fused=device.type == "cuda")


def optimizer_step(model: GPT, optimizer: torch.optim.Optimizer, loss: torch.Tensor, grad_clip: float) -> None:
    """Backward, clip the gradient norm (grad_clip 0: no clipping), step, and drop the gradients."""
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


__all__ = ["make_optimizer", "optimizer_step"]
