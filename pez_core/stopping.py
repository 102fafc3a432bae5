"""When a PEZ target stops: its budget, an explicit patience or cosine, and the default plateau rule.

The default rule (``PEZConfig.early_stop``): a target whose best prompt was found at step b (0-based)
stops once it has gone ``max(plateau_patience, plateau_ratio * (b + 1))`` steps without a better one.
The patience grows with the step of the best because improvements get rarer as a run goes on (they
arrive roughly evenly in log(step)): a target still improving late keeps running, one that has
settled early stops early. Every quantity is the target's own (its own step count and best), so when
it stops does not depend on which other targets share its batch or when it joined.
"""

from __future__ import annotations

import torch


def patience_at(best_step: torch.Tensor, cfg) -> torch.Tensor:
    """Steps without improvement after which the plateau rule stops a target whose best is at ``best_step``."""
    return torch.clamp((best_step + 1).float() * cfg.plateau_ratio, min=float(cfg.plateau_patience))


def stopped(cfg, steps_done: torch.Tensor, best_step: torch.Tensor, best_cos: torch.Tensor) -> torch.Tensor:
    """Which targets stop now (a,) bool, after ``steps_done`` (a,) of their own steps."""
    done = steps_done >= cfg.steps
    since = steps_done - 1 - best_step  # steps run since the best one
    if cfg.early_stop:
        done |= since.float() >= patience_at(best_step, cfg)
    if cfg.patience is not None:
        done |= since >= cfg.patience
    if cfg.target_cosine is not None:
        done |= best_cos >= cfg.target_cosine
    return done


def can_stop_early(cfg) -> bool:
    """False when every target runs exactly ``cfg.steps`` (the loop then needs no device-to-host read)."""
    return cfg.early_stop or cfg.patience is not None or cfg.target_cosine is not None
