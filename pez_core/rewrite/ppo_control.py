"""What steers PPO besides the loss: the KL estimate, the adaptive KL controller and reward scaling.

All three follow trlx 0.6 (the copy inside EasyNLP's examples/BeautifulPrompt), because the paper's
hyperparameters (KL target 6, horizon 10000, reward clip 10) were tuned on these exact quantities:

- ``sequence_kl``: per token ``exp(lr) - 1 - lr`` with ``lr = log pi - log pi_ref``, summed over every
  attended token of a rollout (query and response), averaged over rollouts.
- ``AdaptiveKLController``: Ziegler et al.; trlx calls ``update(mean_kl, n_steps=batch_size)`` after every
  minibatch, i.e. the per-process minibatch size feeds ``n_steps``.
- ``clip_and_scale``: scores clipped to +-cliprange_reward, then divided by the running std of the
  (clipped) scores over every worker.

Shapes: b rollouts, t tokens.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def sequence_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> float:
    """trlx's KL statistic: mean over rollouts of sum_t (exp(lr) - 1 - lr) * mask, lr = logp - logp_ref.

    ``logprobs``, ``ref_logprobs`` and ``mask`` are (b, t - 1): every predicted token of the sequence
    (query and response); as trlx, ``mask`` is the attention mask of the *predicting* position
    (``attention_mask[:, :-1]``).
    """
    log_ratio = (logprobs - ref_logprobs) * mask
    return float(((log_ratio.exp() - 1 - log_ratio) * mask).sum(1).mean())


class AdaptiveKLController:
    """Ziegler et al.: kl_coef *= 1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon


class FixedKLController:
    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


class RunningMoments:
    """Running mean and std of scores over every worker (Chan et al.'s parallel update, as trlx)."""

    def __init__(self):
        self.mean, self.var, self.std, self.count = 0.0, 1.0, 1.0, 1e-24

    def update(self, xs: torch.Tensor) -> None:
        stats = torch.tensor([xs.numel(), float(xs.sum()), float((xs ** 2).sum())], dtype=torch.float64)
        if _distributed():
            dist.all_reduce(stats)
        n, total, sq = stats.tolist()
        xs_mean = total / n
        xs_var = max(sq / n - xs_mean ** 2, 0.0)
        delta, tot = xs_mean - self.mean, self.count + n
        m2 = self.var * self.count + xs_var * n + delta ** 2 * self.count * n / tot
        self.mean += delta * n / tot
        self.var, self.count = m2 / tot, tot
        self.std = math.sqrt(self.var * tot / max(tot - 1, 1)) or 1.0


def clip_and_scale(scores: torch.Tensor, moments: RunningMoments, cliprange_reward: float,
                   scale_reward: str) -> torch.Tensor:
    """Scores clipped to +-cliprange_reward (0: no clip), then divided by the running std ("running")."""
    if cliprange_reward:
        scores = scores.clamp(-cliprange_reward, cliprange_reward)
    moments.update(scores)
    if scale_reward == "running":
        scores = scores / moments.std
    return scores
