"""Compact PPO for the rewriter (BeautifulPrompt stage 3), written here because TRL removed its PPOTrainer.

The algorithm follows Ziegler et al. (2019) as implemented by trlx 0.6, which the paper's code copies:

1. Rollouts: sample a completion for each raw prompt's template (top_k 0, top_p 1: plain sampling).
2. Score: a pluggable reward function (``CombinedReward`` of the reward models, or any callable taking a
   ``RewardBatch``), scaled by the running std of scores and clipped to +-10.
3. Per-token reward: -kl_coef * (log pi(a|s) - log pi_ref(a|s)) against the frozen SFT model, plus the
   score on the last response token.
4. GAE (gamma 1, lambda 0.95) over the response tokens with a value head on the policy.
5. ``ppo_epochs`` passes of clipped policy loss (0.2) + 0.5 * clipped value loss (0.2) in minibatches.
6. An adaptive KL controller moves kl_coef toward a target KL (initial 0.05, target 6, horizon 10000).

Under DistributedDataParallel each worker makes its own rollouts; the KL estimate and score moments are
averaged over workers so every worker keeps the same kl_coef and reward scale.

Shapes: b rollouts, q query tokens (left-padded), r response tokens (right-padded), t = q + r, v vocabulary.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from .optim import global_mean
from .reward_model import RewardBatch
from .sft import context_ids
from .templates import DEFAULT_TEMPLATE, TEMPLATES

log = logging.getLogger(__name__)

VALUE_HEAD_FILE = "value_head.pt"
RewardFn = Callable[[RewardBatch], torch.Tensor]


@dataclass
class PPOConfig:
    lr: float = 5e-6  # AdamW learning rate of policy + value head (paper: 5e-6)
    rollouts_per_step: int = 64  # rollouts per PPO step per worker (paper: 64)
    chunk_size: int = 16  # prompts per generate() call (paper: 16)
    minibatch_size: int = 16  # rollouts per gradient step (paper: 16)
    ppo_epochs: int = 4  # passes over each step's rollouts (paper: 4)
    init_kl_coef: float = 0.05  # initial KL penalty coefficient (paper: 0.05)
    target_kl: float | None = 6.0  # KL the adaptive controller aims at; None keeps kl_coef fixed (paper: 6)
    kl_horizon: int = 10000  # rollouts over which kl_coef moves by at most 20% per unit error (paper: 10000)
    gamma: float = 1.0  # discount (paper: 1)
    lam: float = 0.95  # GAE lambda (paper: 0.95)
    cliprange: float = 0.2  # policy ratio clip (paper: 0.2)
    cliprange_value: float = 0.2  # value prediction clip around the old values (paper: 0.2)
    vf_coef: float = 0.5  # weight of the value loss (paper: 0.5)
    scale_reward: str = "running"  # "running": divide scores by their running std; "none"
    cliprange_reward: float = 10.0  # clip scaled scores to +-this (paper: 10; 0 disables)
    max_new_tokens: int = 256  # generation budget per rollout (paper: 256)
    top_k: int = 0  # 0 disables top-k (paper: 0)
    top_p: float = 1.0  # nucleus sampling mass (paper: 1.0)
    temperature: float = 1.0  # sampling temperature
    max_grad_norm: float = 1.0  # gradient clipping (0 disables)
    total_steps: int = 5000  # PPO steps (paper: 5000)
    template: str = DEFAULT_TEMPLATE  # instruction template the SFT model was trained with

    def __post_init__(self):
        positive = {"lr": self.lr, "rollouts_per_step": self.rollouts_per_step, "chunk_size": self.chunk_size,
                    "minibatch_size": self.minibatch_size, "ppo_epochs": self.ppo_epochs,
                    "kl_horizon": self.kl_horizon, "max_new_tokens": self.max_new_tokens,
                    "total_steps": self.total_steps, "temperature": self.temperature}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.init_kl_coef < 0:
            raise ValueError(f"init_kl_coef must be >= 0, got {self.init_kl_coef}")
        if self.target_kl is not None and self.target_kl <= 0:
            raise ValueError(f"target_kl must be > 0 or None (fixed coefficient), got {self.target_kl}")
        for name in ("gamma", "lam"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("cliprange", "cliprange_value", "vf_coef", "cliprange_reward"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError(f"need 0 < top_p <= 1 and top_k >= 0, got top_p={self.top_p}, top_k={self.top_k}")
        if self.scale_reward not in ("running", "none"):
            raise ValueError(f"scale_reward must be 'running' or 'none', got {self.scale_reward!r}")
        if self.template not in TEMPLATES:
            raise ValueError(f"unknown template {self.template!r}; valid: {', '.join(sorted(TEMPLATES))}")


# ---- policy with a value head ---------------------------------------------------------------------
class PolicyWithValueHead(nn.Module):
    """A causal LM plus trlx's value head (hidden -> 2*hidden -> 1 MLP) on the last hidden state."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        h = lm.config.hidden_size
        self.v_head = nn.Sequential(nn.Linear(h, 2 * h), nn.ReLU(), nn.Linear(2 * h, 1))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "PolicyWithValueHead":
        """Load the LM (e.g. the SFT model) and, if saved beside it, the value head."""
        from transformers import AutoModelForCausalLM

        model = cls(AutoModelForCausalLM.from_pretrained(path))
        head = Path(path) / VALUE_HEAD_FILE
        if head.is_file():
            model.v_head.load_state_dict(torch.load(head, map_location="cpu", weights_only=True))
        return model

    def save_pretrained(self, folder: str | Path) -> None:
        """The LM in Hugging Face format (loadable by AutoModelForCausalLM) plus value_head.pt."""
        self.lm.save_pretrained(folder)
        torch.save(self.v_head.state_dict(), Path(folder) / VALUE_HEAD_FILE)

    def forward(self, input_ids, attention_mask):
        """(logits (b, t, v), values (b, t)) for left-padded sequences."""
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                      **_position_kwargs(self.lm, attention_mask))
        return out.logits, self.v_head(out.hidden_states[-1]).squeeze(-1)


def _position_kwargs(lm: nn.Module, attention_mask: torch.Tensor) -> dict:
    """Position ids that skip left padding, for models with absolute positions (BLOOM's ALiBi needs none)."""
    if getattr(lm.config, "model_type", "") == "bloom":
        return {}
    return {"position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0)}


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel (generation and saving go through it)."""
    return model.module if hasattr(model, "module") else model


# ---- KL control and reward scaling ----------------------------------------------------------------
class AdaptiveKLController:
    """Ziegler et al.: kl_coef *= 1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon."""

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
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)
        n, total, sq = stats.tolist()
        xs_mean = total / n
        xs_var = max(sq / n - xs_mean ** 2, 0.0)
        delta, tot = xs_mean - self.mean, self.count + n
        m2 = self.var * self.count + xs_var * n + delta ** 2 * self.count * n / tot
        self.mean += delta * n / tot
        self.var, self.count = m2 / tot, tot
        self.std = math.sqrt(self.var * tot / max(tot - 1, 1)) or 1.0


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def gae(values: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Advantages (whitened over valid tokens) and returns (b, r); values/rewards are 0 past the end."""
    values, rewards = values * mask, rewards * mask
    last, advantages = torch.zeros_like(values[:, 0]), []
    for t in reversed(range(values.shape[1])):
        next_value = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        advantages.append(last)
    advantages = torch.stack(advantages[::-1], dim=1)
    returns = advantages + values
    return whiten(advantages, mask).detach(), returns.detach()


def response_logprobs(logits: torch.Tensor, tokens: torch.Tensor, q: int) -> torch.Tensor:
    """log p of each response token (b, r): the logits at position i predict token i + 1."""
    logp = torch.log_softmax(logits[:, q - 1:-1].float(), dim=-1)
    return logp.gather(-1, tokens[:, q:].unsqueeze(-1)).squeeze(-1)


# ---- the trainer ----------------------------------------------------------------------------------
@dataclass
class Experience:
    """One PPO step's rollouts, on the policy's device."""

    tokens: torch.Tensor  # (b, t) query + response ids
    attention_mask: torch.Tensor  # (b, t) 1 on real tokens
    mask: torch.Tensor  # (b, r) 1 on response tokens up to and including EOS
    query_len: int  # q
    logprobs: torch.Tensor  # (b, r) log pi_old
    values: torch.Tensor  # (b, r) value estimates before each response token
    advantages: torch.Tensor  # (b, r)
    returns: torch.Tensor  # (b, r)


class PPOTrainer:
    """PPO on ``policy`` (a PolicyWithValueHead, maybe DDP-wrapped) against the frozen ``ref_model``.

    ``step(raws, references)`` makes ``len(raws)`` rollouts, scores them with ``reward_fn`` and runs the
    PPO epochs; it returns a dict of statistics (score, KL, kl_coef, losses, response length).
    """

    def __init__(self, policy: nn.Module, ref_model: nn.Module, tokenizer, reward_fn: RewardFn,
                 cfg: PPOConfig, optimizer: torch.optim.Optimizer | None = None):
        self.policy, self.ref_model, self.tokenizer = policy, ref_model, tokenizer
        self.reward_fn, self.cfg = reward_fn, cfg
        self.ref_model.eval().requires_grad_(False)
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token first")
        self.optimizer = optimizer or torch.optim.AdamW(policy.parameters(), lr=cfg.lr)
        self.kl_ctl = (AdaptiveKLController(cfg.init_kl_coef, cfg.target_kl, cfg.kl_horizon)
                       if cfg.target_kl is not None else FixedKLController(cfg.init_kl_coef))
        self.moments = RunningMoments()
        self.steps_done = 0

    @property
    def device(self) -> torch.device:
        return next(self.policy.parameters()).device

    # -- rollouts --
    @torch.no_grad()
    def generate(self, raws: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Sample one completion per raw prompt: (tokens (b, t), attention mask (b, t), q)."""
        lm, pad, eos = unwrap(self.policy).lm, self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        queries = [context_ids(self.tokenizer, raw, self.cfg.template) for raw in raws]
        q = max(len(ids) for ids in queries)
        query = torch.full((len(queries), q), pad, dtype=torch.long)
        query_mask = torch.zeros_like(query)
        for i, ids in enumerate(queries):  # left padding
            query[i, q - len(ids):], query_mask[i, q - len(ids):] = torch.tensor(ids), 1
        chunks = []
        lm.eval()
        for start in range(0, len(queries), self.cfg.chunk_size):
            sl = slice(start, start + self.cfg.chunk_size)
            out = lm.generate(
                input_ids=query[sl].to(self.device), attention_mask=query_mask[sl].to(self.device),
                do_sample=True, top_k=self.cfg.top_k, top_p=self.cfg.top_p, temperature=self.cfg.temperature,
                max_new_tokens=self.cfg.max_new_tokens, min_new_tokens=1, pad_token_id=pad, eos_token_id=eos,
            )
            chunks.append(out[:, q:].cpu())
        r = max(c.shape[1] for c in chunks)
        response = torch.cat([nn.functional.pad(c, (0, r - c.shape[1]), value=pad) for c in chunks])
        ended = (response == eos).long().cumsum(-1) - (response == eos).long()  # EOS seen before this token
        response_mask = (ended == 0).long()
        response = torch.where(response_mask.bool(), response, torch.full_like(response, pad))
        return torch.cat([query, response], 1), torch.cat([query_mask, response_mask], 1), q

    def _decode(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[list[str], list[list[int]]]:
        eos, texts, ids = self.tokenizer.eos_token_id, [], []
        for row, m in zip(tokens.tolist(), mask.tolist()):
            kept = [tok for tok, keep in zip(row, m) if keep and tok != eos]
            ids.append(kept)
            texts.append(self.tokenizer.decode(kept, skip_special_tokens=True).strip())
        return texts, ids

    @torch.no_grad()
    def make_experience(self, raws: Sequence[str], references: Sequence[str | None] | None = None):
        """Rollouts, scores, per-token KL-penalised rewards and GAE for one step; returns (Experience, stats)."""
        cfg = self.cfg
        tokens, attn, q = self.generate(raws)
        tokens, attn = tokens.to(self.device), attn.to(self.device)
        mask = attn[:, q:].float()
        responses, response_ids = self._decode(tokens[:, q:], mask)
        batch = RewardBatch(list(raws), responses, list(references or [None] * len(raws)), response_ids)
        scores = torch.as_tensor(self.reward_fn(batch), dtype=torch.float32).reshape(-1).cpu()
        if scores.numel() != len(raws):
            raise ValueError(f"reward function returned {scores.numel()} scores for {len(raws)} rollouts")
        raw_score_mean = global_mean(float(scores.mean()))
        self.moments.update(scores)
        if cfg.scale_reward == "running":
            scores = scores / self.moments.std
        if cfg.cliprange_reward:
            scores = scores.clamp(-cfg.cliprange_reward, cfg.cliprange_reward)

        self.policy.eval()
        logits, values = self.policy(tokens, attn)
        logprobs = response_logprobs(logits, tokens, q)
        values = values[:, q - 1:-1]
        ref_logits = self.ref_model(input_ids=tokens, attention_mask=attn,
                                    **_position_kwargs(self.ref_model, attn)).logits
        ref_logprobs = response_logprobs(ref_logits, tokens, q)

        log_ratio = (logprobs - ref_logprobs) * mask
        # k3 estimate of KL(pi || ref) per rollout: r - 1 - log r with r = ref / pi (unbiased, >= 0). trlx 0.6
        # uses r = pi / ref, which estimates KL plus a chi-square term and blows up as pi sharpens.
        kl = float(((-log_ratio).exp() - 1 + log_ratio).mul(mask).sum(1).mean())
        rewards = -self.kl_ctl.value * log_ratio
        last = (mask.sum(1).long() - 1).clamp(min=0)
        rewards[torch.arange(len(raws)), last] += scores.to(self.device)
        advantages, returns = gae(values, rewards, mask, cfg.gamma, cfg.lam)
        exp = Experience(tokens, attn, mask, q, logprobs * mask, values * mask, advantages, returns)
        stats = {"score": raw_score_mean, "scaled_score": global_mean(float(scores.mean())),
                 "kl": global_mean(kl), "kl_coef": self.kl_ctl.value,
                 "response_tokens": global_mean(float(mask.sum(1).mean())),
                 "sample": responses[0] if responses else ""}
        return exp, stats

    # -- learning --
    def loss(self, exp: Experience, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Clipped policy loss + vf_coef * clipped value loss on the rollouts ``idx``."""
        cfg, q, mask = self.cfg, exp.query_len, exp.mask[idx]
        logits, values = self.policy(exp.tokens[idx], exp.attention_mask[idx])
        logprobs = response_logprobs(logits, exp.tokens[idx], q)
        values = values[:, q - 1:-1]
        old_values, returns, adv = exp.values[idx], exp.returns[idx], exp.advantages[idx]

        values_clipped = old_values + (values - old_values).clamp(-cfg.cliprange_value, cfg.cliprange_value)
        vf_loss = 0.5 * masked_mean(torch.max((values - returns) ** 2, (values_clipped - returns) ** 2), mask)
        log_ratio = (logprobs - exp.logprobs[idx]) * mask
        ratio = log_ratio.exp()
        pg_loss = masked_mean(torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.cliprange, 1 + cfg.cliprange)), mask)
        with torch.no_grad():
            stats = {"pg_loss": float(pg_loss), "vf_loss": float(vf_loss),
                     "clipfrac": float(masked_mean(((ratio - 1).abs() > cfg.cliprange).float(), mask)),
                     "approx_kl": float(masked_mean((ratio - 1) - log_ratio, mask))}
        return pg_loss + cfg.vf_coef * vf_loss, stats

    def learn(self, exp: Experience) -> dict[str, float]:
        """``ppo_epochs`` shuffled passes over the rollouts in minibatches; mean statistics."""
        self.policy.train()
        n, totals, count = exp.tokens.shape[0], {}, 0
        for _ in range(self.cfg.ppo_epochs):
            for idx in torch.randperm(n).split(self.cfg.minibatch_size):
                self.optimizer.zero_grad(set_to_none=True)
                loss, stats = self.loss(exp, idx.to(self.device))
                loss.backward()
                if self.cfg.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.max_grad_norm)
                self.optimizer.step()
                for k, v in stats.items():
                    totals[k] = totals.get(k, 0.0) + v
                count += 1
        return {k: v / count for k, v in totals.items()}

    def step(self, raws: Sequence[str], references: Sequence[str | None] | None = None) -> dict:
        """One PPO step: rollouts, PPO epochs, then the KL controller update (with the pre-update KL)."""
        exp, stats = self.make_experience(raws, references)
        stats.update(self.learn(exp))
        n_rollouts = len(raws) * (dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1)
        self.kl_ctl.update(stats["kl"], n_rollouts)
        self.steps_done += 1
        return stats

    # -- checkpointing --
    def state_dict(self) -> dict:
        """Everything but the policy weights: optimizer, kl_coef, reward moments, steps done."""
        m = self.moments
        return {"optimizer": self.optimizer.state_dict(), "kl_coef": self.kl_ctl.value, "steps_done": self.steps_done,
                "moments": {"mean": m.mean, "var": m.var, "std": m.std, "count": m.count}}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.kl_ctl.value, self.steps_done = state["kl_coef"], state["steps_done"]
        for k, v in state["moments"].items():
            setattr(self.moments, k, v)
