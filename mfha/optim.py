"""The optimizer every training run uses (the trainer's, and the memory measurement's steps)."""
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


__all__ = ["make_optimizer"]
