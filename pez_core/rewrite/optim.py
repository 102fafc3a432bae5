"""The optimiser, schedule, one gradient step and the mean over workers shared by the training stages.

Plain torch: the same functions run in a notebook, in a test, or inside a Ray Train worker where the
model is wrapped in DistributedDataParallel (gradients are averaged across workers by ``backward``).
"""

from __future__ import annotations

import math
import random
from typing import Callable

import torch


def global_mean(value: float) -> float:
    """The mean of ``value`` over the workers of a torch.distributed run (``value`` itself when alone)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t) / dist.get_world_size()
    return value


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's generators (each worker adds its rank so shards differ)."""
    random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; no decay on biases and norms (as HF Trainer)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def cosine_schedule(optimizer, total_steps: int, warmup_ratio: float = 0.03):
    """Linear warmup over ``warmup_ratio`` of the steps, then cosine decay to 0 (the paper's SFT schedule)."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warmup = int(round(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_step(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.nn.Module, dict], torch.Tensor],
    batch: dict,
    optimizer: torch.optim.Optimizer,
    scheduler=None,
    max_grad_norm: float | None = 1.0,
) -> dict[str, float]:
    """One optimiser step on ``batch``: loss, backward, clip, step. Returns {"loss", "grad_norm", "lr"}."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model, batch)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {loss.item()} (lower the learning rate or check the data)")
    loss.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm else float("inf"))
    optimizer.step()
    lr = optimizer.param_groups[0]["lr"]
    if scheduler is not None:
        scheduler.step()
    return {"loss": float(loss.detach()), "grad_norm": float(norm), "lr": float(lr)}
