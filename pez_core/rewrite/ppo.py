"""Compact PPO for the rewriter (BeautifulPrompt stage 3), written here because TRL removed its PPOTrainer.

The algorithm is trlx 0.6's, which the paper's code copies (differences: docs/training.md):

1. Collection: sample a completion for each of ``rollouts_per_step`` raw prompts (top_k 0, top_p 1).
2. Score with a pluggable reward function (``CombinedReward`` of the reward models, or any callable taking
   a ``RewardBatch``); clip to +-10, then divide by the running std (ppo_control.clip_and_scale).
3. Per-token reward: -kl_coef * (log pi - log pi_ref) on the response, plus the score on its last token.
4. GAE (gamma 1, lambda 0.95) over the response tokens with a value head on the policy.
5. Learning as trlx runs it: the rollouts are shuffled into minibatches of ``minibatch_size`` (paper: 4)
   and each minibatch gets ``ppo_epochs`` (4) consecutive optimiser updates of clipped policy loss (0.2)
   + 0.5 * clipped value loss (0.2). ``total_steps`` counts these updates, as trlx's does.
6. After each minibatch the adaptive KL controller moves kl_coef toward the target (6) with
   ``n_steps = minibatch_size``, fed with trlx's KL statistic of the collection (ppo_control.sequence_kl).

Under DistributedDataParallel each worker makes its own rollouts; the KL statistic and score moments are
averaged over workers so every worker keeps the same kl_coef and reward scale.

Shapes: b rollouts, q query tokens (left-padded), r response tokens (right-padded), t = q + r, v vocabulary.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from .ppo_control import (  # noqa: F401  (re-exported)
    AdaptiveKLController,
    FixedKLController,
    RunningMoments,
    clip_and_scale,
    sequence_kl,
)
from .optim import global_mean
from .ppo_model import VALUE_HEAD_FILE, PolicyWithValueHead, freeze_lower_layers, position_kwargs, unwrap  # noqa: F401
from .reward_model import RewardBatch
from .sft import context_ids
from .templates import DEFAULT_TEMPLATE, TEMPLATES

log = logging.getLogger(__name__)

RewardFn = Callable[[RewardBatch], torch.Tensor]


@dataclass
class PPOConfig:
    lr: float = 5e-6  # AdamW learning rate of policy + value head (paper: 5e-6)
    min_lr: float | None = None  # cosine annealing floor over total_steps (None: lr / 10; = lr: constant)
    weight_decay: float = 1e-6  # AdamW weight decay on every trainable tensor (trlx config: 1e-6)
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas (trlx config: 0.9, 0.95)
    rollouts_per_step: int = 64  # rollouts per collection per worker (trlx num_rollouts; paper: 64)
    chunk_size: int = 16  # prompts per generate() call (paper: 16)
    minibatch_size: int = 4  # rollouts per optimiser update per worker (trlx train.batch_size; paper: 4)
    ppo_epochs: int = 4  # consecutive updates on each minibatch (trlx ppo_epochs; paper: 4)
    num_layers_unfrozen: int = 8  # top transformer blocks trained; embeddings and lower blocks frozen (-1: all)
    init_kl_coef: float = 0.05  # initial KL penalty coefficient (paper: 0.05)
    target_kl: float | None = 6.0  # trlx KL statistic the controller aims at; None keeps kl_coef fixed (paper: 6)
    kl_horizon: int = 10000  # rollouts over which kl_coef moves by at most 20% per unit error (paper: 10000)
    gamma: float = 1.0  # discount (paper: 1)
    lam: float = 0.95  # GAE lambda (paper: 0.95)
    cliprange: float = 0.2  # policy ratio clip (paper: 0.2)
    cliprange_value: float = 0.2  # value prediction clip around the old values (paper: 0.2)
    vf_coef: float = 0.5  # weight of the value loss (paper: 0.5)
    scale_reward: str = "running"  # "running": divide (clipped) scores by their running std; "none"
    cliprange_reward: float = 10.0  # clip scores to +-this before scaling (paper: 10; 0 disables)
    max_new_tokens: int = 256  # generation budget per rollout (paper: 256)
    top_k: int = 0  # 0 disables top-k (paper: 0)
    top_p: float = 1.0  # nucleus sampling mass (paper: 1.0)
    temperature: float = 1.0  # sampling temperature
    max_grad_norm: float = 1.0  # gradient clipping (0 disables)
    total_steps: int = 5000  # optimiser updates, as trlx counts them (paper: 5000)
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
        for name in ("cliprange", "cliprange_value", "vf_coef", "cliprange_reward", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError(f"need 0 < top_p <= 1 and top_k >= 0, got top_p={self.top_p}, top_k={self.top_k}")
        if self.scale_reward not in ("running", "none"):
            raise ValueError(f"scale_reward must be 'running' or 'none', got {self.scale_reward!r}")
        if self.template not in TEMPLATES:
            raise ValueError(f"unknown template {self.template!r}; valid: {', '.join(sorted(TEMPLATES))}")
        if self.num_layers_unfrozen < -1:
            raise ValueError(f"num_layers_unfrozen must be >= -1 (-1: all), got {self.num_layers_unfrozen}")
        if self.min_lr is not None and not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr must be in [0, lr={self.lr}], got {self.min_lr}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be in [0, 1), got {self.betas}")

    @property
    def updates_per_collection(self) -> int:
        """Optimiser updates one collection of rollouts gives: minibatches x ppo_epochs (paper: 16 x 4)."""
        return math.ceil(self.rollouts_per_step / self.minibatch_size) * self.ppo_epochs

    @property
    def collections(self) -> int:
        """Collections needed for ``total_steps`` updates (paper: 5000 / 64 -> 79)."""
        return math.ceil(self.total_steps / self.updates_per_collection)


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


def sequence_logprobs(logits: torch.Tensor, tokens: torch.Tensor, start: int = 0) -> torch.Tensor:
    """log p of tokens start + 1 .. t - 1 (b, t - 1 - start): the logits at position i predict token i + 1."""
    logp = torch.log_softmax(logits[:, start:-1].float(), dim=-1)
    return logp.gather(-1, tokens[:, start + 1:].unsqueeze(-1)).squeeze(-1)


def response_logprobs(logits: torch.Tensor, tokens: torch.Tensor, q: int) -> torch.Tensor:
    """log p of each response token (b, r)."""
    return sequence_logprobs(logits, tokens, q - 1)


# ---- the trainer ----------------------------------------------------------------------------------
@dataclass
class Experience:
    """One collection of rollouts, on the policy's device."""

    tokens: torch.Tensor  # (b, t) query + response ids
    attention_mask: torch.Tensor  # (b, t) 1 on real tokens
    mask: torch.Tensor  # (b, r) 1 on response tokens up to and including EOS
    query_len: int  # q
    logprobs: torch.Tensor  # (b, r) log pi_old
    values: torch.Tensor  # (b, r) value estimates before each response token
    rewards: torch.Tensor  # (b, r) -kl_coef * (log pi_old - log pi_ref), plus the scaled score at the end
    advantages: torch.Tensor  # (b, r)
    returns: torch.Tensor  # (b, r)


class PPOTrainer:
    """PPO on ``policy`` (a PolicyWithValueHead, maybe DDP-wrapped) against the frozen ``ref_model``.

    ``step(raws, references)`` makes one collection of ``len(raws)`` rollouts, scores them with
    ``reward_fn`` and runs the minibatch updates (stopping at ``total_steps`` updates); it returns a dict of
    statistics. ``evaluate(raws, references)`` scores greedy rewrites. Freeze layers (``num_layers_unfrozen``)
    before wrapping the policy in DDP; the trainer applies the same freeze to an unwrapped policy.
    """

    def __init__(self, policy: nn.Module, ref_model: nn.Module, tokenizer, reward_fn: RewardFn,
                 cfg: PPOConfig, optimizer: torch.optim.Optimizer | None = None):
        self.policy, self.ref_model, self.tokenizer = policy, ref_model, tokenizer
        self.reward_fn, self.cfg = reward_fn, cfg
        self.ref_model.eval().requires_grad_(False)
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token first")
        if policy is unwrap(policy):
            freeze_lower_layers(policy.lm, cfg.num_layers_unfrozen)
        params = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = optimizer or torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas),
                                                        weight_decay=cfg.weight_decay)
        min_lr = cfg.lr / 10 if cfg.min_lr is None else cfg.min_lr
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, cfg.total_steps, min_lr)
        self.kl_ctl = (AdaptiveKLController(cfg.init_kl_coef, cfg.target_kl, cfg.kl_horizon)
                       if cfg.target_kl is not None else FixedKLController(cfg.init_kl_coef))
        self.moments = RunningMoments()
        self.steps_done = 0  # collections
        self.updates_done = 0  # optimiser updates (trlx's iter_count)

    @property
    def device(self) -> torch.device:
        return next(self.policy.parameters()).device

    @property
    def done(self) -> bool:
        return self.updates_done >= self.cfg.total_steps

    # -- rollouts --
    @torch.no_grad()
    def generate(self, raws: Sequence[str], greedy: bool = False) -> tuple[torch.Tensor, torch.Tensor, int]:
        """One completion per raw prompt (sampled, or greedy): (tokens (b, t), attention mask (b, t), q)."""
        lm, pad, eos = unwrap(self.policy).lm, self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        queries = [context_ids(self.tokenizer, raw, self.cfg.template) for raw in raws]
        q = max(len(ids) for ids in queries)
        query = torch.full((len(queries), q), pad, dtype=torch.long)
        query_mask = torch.zeros_like(query)
        for i, ids in enumerate(queries):  # left padding
            query[i, q - len(ids):], query_mask[i, q - len(ids):] = torch.tensor(ids), 1
        decoding = ({"do_sample": False} if greedy else
                    {"do_sample": True, "top_k": self.cfg.top_k, "top_p": self.cfg.top_p,
                     "temperature": self.cfg.temperature})
        chunks = []
        lm.eval()
        for start in range(0, len(queries), self.cfg.chunk_size):
            sl = slice(start, start + self.cfg.chunk_size)
            out = lm.generate(
                input_ids=query[sl].to(self.device), attention_mask=query_mask[sl].to(self.device), **decoding,
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

    def _score(self, raws, references, tokens, mask) -> tuple[torch.Tensor, list[str]]:
        responses, response_ids = self._decode(tokens, mask)
        batch = RewardBatch(list(raws), responses, list(references or [None] * len(raws)), response_ids)
        scores = torch.as_tensor(self.reward_fn(batch), dtype=torch.float32).reshape(-1).cpu()
        if scores.numel() != len(raws):
            raise ValueError(f"reward function returned {scores.numel()} scores for {len(raws)} rollouts")
        return scores, responses

    @torch.no_grad()
    def make_experience(self, raws: Sequence[str], references: Sequence[str | None] | None = None):
        """Rollouts, scores, per-token KL-penalised rewards and GAE for one collection: (Experience, stats)."""
        cfg = self.cfg
        tokens, attn, q = self.generate(raws)
        tokens, attn = tokens.to(self.device), attn.to(self.device)
        mask = attn[:, q:].float()
        scores, responses = self._score(raws, references, tokens[:, q:], mask)
        raw_score_mean = global_mean(float(scores.mean()))
        scores = clip_and_scale(scores, self.moments, cfg.cliprange_reward, cfg.scale_reward)

        self.policy.eval()
        logits, values = self.policy(tokens, attn)
        all_logprobs = sequence_logprobs(logits, tokens)  # (b, t - 1): query and response tokens
        values = values[:, q - 1:-1]
        ref_logits = self.ref_model(input_ids=tokens, attention_mask=attn,
                                    **position_kwargs(self.ref_model, attn)).logits
        all_ref_logprobs = sequence_logprobs(ref_logits, tokens)
        kl = sequence_kl(all_logprobs, all_ref_logprobs, attn[:, :-1].float())  # trlx: mask of the predictor

        logprobs, ref_logprobs = all_logprobs[:, q - 1:], all_ref_logprobs[:, q - 1:]
        log_ratio = (logprobs - ref_logprobs) * mask
        rewards = -self.kl_ctl.value * log_ratio
        last = (mask.sum(1).long() - 1).clamp(min=0)
        rewards[torch.arange(len(raws)), last] += scores.to(self.device)
        advantages, returns = gae(values, rewards, mask, cfg.gamma, cfg.lam)
        exp = Experience(tokens, attn, mask, q, logprobs * mask, values * mask, rewards * mask, advantages, returns)
        stats = {"score": raw_score_mean, "scaled_score": global_mean(float(scores.mean())),
                 "kl": global_mean(kl), "kl_coef": self.kl_ctl.value,
                 "response_tokens": global_mean(float(mask.sum(1).mean())),
                 "sample": responses[0] if responses else ""}
        return exp, stats

    @torch.no_grad()
    def evaluate(self, raws: Sequence[str], references: Sequence[str | None] | None = None) -> float:
        """Mean reward (unscaled) of greedy rewrites of ``raws``, on this worker."""
        tokens, attn, q = self.generate(raws, greedy=True)
        scores, _ = self._score(raws, references, tokens[:, q:], attn[:, q:].float())
        self.policy.train()
        return float(scores.mean())

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
                     "approx_kl": float(masked_mean((ratio - 1) - log_ratio, mask)),
                     "ratio_dev": float(((ratio - 1).abs() * mask).max())}
        return pg_loss + cfg.vf_coef * vf_loss, stats

    def learn(self, exp: Experience, kl: float) -> dict[str, float]:
        """trlx's loop over one collection: shuffled minibatches, ``ppo_epochs`` consecutive updates on each,
        then a KL controller update with n_steps = the minibatch's rollouts. Stops at ``total_steps``.

        Returns mean statistics plus ``first_ratio_dev``: max |ratio - 1| of the collection's first update,
        which is 0 when the rollouts' log-probabilities match the policy that made them."""
        self.policy.train()
        n, totals, count, first = exp.tokens.shape[0], {}, 0, None
        for idx in torch.randperm(n).split(self.cfg.minibatch_size):
            idx = idx.to(self.device)
            for _ in range(self.cfg.ppo_epochs):
                if self.done:
                    break
                self.optimizer.zero_grad(set_to_none=True)
                loss, stats = self.loss(exp, idx)
                loss.backward()
                if self.cfg.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.updates_done += 1
                first = stats["ratio_dev"] if first is None else first
                for k, v in stats.items():
                    totals[k] = totals.get(k, 0.0) + v
                count += 1
            if self.done:
                break
            self.kl_ctl.update(kl, len(idx))
        out = {k: v / max(count, 1) for k, v in totals.items()}
        out["first_ratio_dev"] = first if first is not None else 0.0
        return out

    def step(self, raws: Sequence[str], references: Sequence[str | None] | None = None) -> dict:
        """One collection: rollouts, then the minibatch updates and KL controller updates."""
        exp, stats = self.make_experience(raws, references)
        stats.update(self.learn(exp, stats["kl"]))
        self.steps_done += 1
        stats.update(updates=self.updates_done, lr=self.optimizer.param_groups[0]["lr"])
        return stats

    # -- checkpointing --
    def state_dict(self) -> dict:
        """Everything but the policy weights: optimiser, schedule, kl_coef, reward moments, progress."""
        m = self.moments
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "kl_coef": self.kl_ctl.value, "steps_done": self.steps_done, "updates_done": self.updates_done,
                "moments": {"mean": m.mean, "var": m.var, "std": m.std, "count": m.count}}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])
        self.kl_ctl.value, self.steps_done = state["kl_coef"], state["steps_done"]
        self.updates_done = state.get("updates_done", 0)
        for k, v in state["moments"].items():
            setattr(self.moments, k, v)
