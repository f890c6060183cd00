"""The optimiser both base training and unlearning use: AdamW (β 0.9/0.95, as in the paper)
with a linear warm-up and a cosine decay, stepped every optimiser step."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """Learning-rate multiplier at ``step``: 0→1 over the warm-up, then cosine down to min_ratio."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def adamw_warmup_cosine(parameters: Iterable[torch.nn.Parameter], lr: float, weight_decay: float,
                        warmup_steps: int, total_steps: int) -> dict:
    """A Lightning ``configure_optimizers`` answer for these settings."""
    optimizer = torch.optim.AdamW(list(parameters), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup_steps, total_steps)
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
