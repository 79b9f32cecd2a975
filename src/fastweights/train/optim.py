"""The optimiser, its learning-rate schedule and mixed precision."""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Optional

import torch
from torch import nn

from ..models import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up ``lr * (step + 1) / warmup`` for ``step < warmup``, then cosine from ``lr`` to
    ``min_lr`` at ``cfg.steps``: ``min_lr + (lr - min_lr) (1 + cos(pi p)) / 2``,
    ``p = (step - warmup) / (steps - warmup)``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * p))


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on parameters of rank >= 2 (matrices, embeddings) only."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> Optional[torch.dtype]:
    """``torch.bfloat16`` when autocast is on for ``device`` (``'auto'``: CUDA with bf16), else ``None``."""
    if cfg.dtype == "bfloat16":
        return torch.bfloat16
    if cfg.dtype == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast_context(device: torch.device, amp: Optional[torch.dtype]):
    """``torch.autocast`` to ``amp`` on ``device``, or a no-op context when ``amp`` is None."""
    return torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext()
