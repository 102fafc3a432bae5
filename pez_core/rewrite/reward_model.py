"""Regression reward models of BeautifulPrompt and the combined PPO reward.

Two causal-LM backbones with a bias-free linear head on the last token (AutoModelForSequenceClassification,
``num_labels=1``), trained with MSE. As in the authors' code every input ends with the EOS token (the
head reads that position) and inputs longer than ``max_length`` are cut from the left:

- r_aes(prompt)       regresses ``aesthetic_score``; input: the prompt.
- r_ps(raw, prompt)   regresses ``pick_score``; input: ``Input: {raw}\\nOutput: {prompt}``.

The targets are standardised with the training set's mean and std (kept in the saved config as
``reward_label_mean`` / ``reward_label_std``) so a fresh head starts at the right scale; ``RewardModel``
returns scores in the original units. The PPO reward is

    r = alpha * r_ps(raw, generated) + (1 - alpha) * r_aes(generated)   minus the same for the dataset's
                                                                          high-quality prompt,

with alpha 0.7 by default (``CombinedReward``).

Shapes: b texts, t tokens (right-padded).
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from .sft import PadCollator
from .templates import reward_input
from .tokenizer import ensure_pad_token

log = logging.getLogger(__name__)

KINDS = {  # kind -> (score column it regresses, what its input is)
    "aes": ("aesthetic_score", "the prompt"),
    "ps": ("pick_score", "'Input: {raw}\\nOutput: {prompt}'"),
}


def reward_text(kind: str, raw: str, prompt: str) -> str:
    """The text the ``kind`` reward model reads for a (raw, prompt) pair."""
    if kind == "aes":
        return prompt.strip()
    if kind == "ps":
        return reward_input(raw, prompt)
    raise ValueError(f"unknown reward model kind {kind!r}; valid: {', '.join(KINDS)}")


def encode_reward_texts(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids as the authors' reward models read them: EOS appended, then cut from the LEFT to
    ``max_length``, so the scored last token is always EOS and a long input keeps its end."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token (the reward models score the EOS position)")
    ids = tokenizer(list(texts))["input_ids"]
    return [(i + [tokenizer.eos_token_id])[-max_length:] for i in ids]


@dataclass
class RewardConfig:
    kind: str = "ps"  # "aes" (input prompt, target aesthetic_score) or "ps" (input raw + prompt, pick_score)
    lr: float = 2e-5  # AdamW learning rate (2e-5 for 1b1 backbones; ~1e-3 for tiny test models)
    epochs: int = 1  # passes over the rows
    batch_size: int = 16  # rows per worker per step
    max_length: int = 384  # tokens per input, EOS included; longer inputs are cut from the left
    warmup_ratio: float = 0.03  # linear warmup share before the cosine decay
    weight_decay: float = 0.0  # AdamW weight decay on matrices
    max_grad_norm: float = 1.0  # gradient clipping (0 disables)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown reward model kind {self.kind!r}; valid: {', '.join(KINDS)}")
        if self.lr <= 0 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"need lr > 0, epochs >= 1, batch_size >= 1; "
                             f"got {self.lr}, {self.epochs}, {self.batch_size}")
        if self.max_length < 4:
            raise ValueError(f"max_length must be >= 4 tokens, got {self.max_length}")

    @property
    def score_column(self) -> str:
        return KINDS[self.kind][0]


def load_backbone(path: str | Path, tokenizer, label_mean: float = 0.0, label_std: float = 1.0,
                  kind: str | None = None):
    """A regression model (num_labels=1, set on the config) from a causal LM or a saved reward model."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    ensure_pad_token(tokenizer)
    config = AutoConfig.from_pretrained(path)
    config.num_labels = 1  # transformers 5 rejects num_labels as a keyword here: set it on the config
    config.problem_type = "regression"
    config.pad_token_id = tokenizer.pad_token_id
    if not hasattr(config, "reward_label_mean"):  # a fresh head: remember how targets are standardised
        config.reward_label_mean, config.reward_label_std = float(label_mean), float(label_std)
    if kind is not None:
        config.reward_kind = kind
    return AutoModelForSequenceClassification.from_pretrained(path, config=config)


def label_stats(scores: Sequence[float]) -> tuple[float, float]:
    """Mean and std used to standardise the targets (std 1 when the scores are constant)."""
    mean = statistics.fmean(scores)
    std = statistics.pstdev(scores) if len(scores) > 1 else 0.0
    return mean, (std if std > 1e-8 else 1.0)


class RegressionDataset(torch.utils.data.Dataset):
    """Tokenised reward inputs with standardised float labels."""

    def __init__(self, tokenizer, kind: str, raws: Sequence[str], prompts: Sequence[str],
                 scores: Sequence[float], mean: float, std: float, max_length: int = 384):
        if not len(raws) == len(prompts) == len(scores):
            raise ValueError(f"lengths differ: {len(raws)} raw, {len(prompts)} prompts, {len(scores)} scores")
        texts = [reward_text(kind, r, p) for r, p in zip(raws, prompts)]
        ids = encode_reward_texts(tokenizer, texts, max_length)
        self.examples = [{"input_ids": i, "labels": (float(s) - mean) / std} for i, s in zip(ids, scores)]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        return self.examples[i]


class RegressionCollator(PadCollator):
    """Right-pads input ids and stacks the float labels."""

    def __call__(self, examples):
        examples = list(examples)
        labels = torch.tensor([e["labels"] for e in examples], dtype=torch.float32)
        out = super().__call__([{"input_ids": e["input_ids"]} for e in examples])
        out["labels"] = labels
        return out


def regression_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """MSE between the last-token output and the standardised score."""
    pred = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
    return torch.nn.functional.mse_loss(pred.float(), batch["labels"])


class RewardModel:
    """A trained regression reward model that scores (raw, prompt) pairs in the score's own units."""

    def __init__(self, model, tokenizer, kind: str, max_length: int = 384, batch_size: int = 16):
        if kind not in KINDS:
            raise ValueError(f"unknown reward model kind {kind!r}; valid: {', '.join(KINDS)}")
        self.model, self.tokenizer, self.kind = model.eval(), tokenizer, kind
        self.max_length, self.batch_size = max_length, batch_size
        self.mean = float(getattr(model.config, "reward_label_mean", 0.0))
        self.std = float(getattr(model.config, "reward_label_std", 1.0))
        self.collate = PadCollator(tokenizer.pad_token_id)
        for p in self.model.parameters():
            p.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, path: str | Path, kind: str | None = None, device: str = "cpu", **kwargs):
        """Load a reward model saved by ``promptmine train reward`` (its kind is read from the config)."""
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        model = load_backbone(path, tokenizer).to(device)
        kind = kind or getattr(model.config, "reward_kind", None)
        if kind is None:
            raise ValueError(f"{path}: config has no reward_kind; pass kind='aes' or 'ps'")
        return cls(model, tokenizer, kind, **kwargs)

    @torch.no_grad()
    def score(self, raws: Sequence[str], prompts: Sequence[str]) -> torch.Tensor:
        """Predicted scores (b,) for each (raw, prompt); raw is ignored by an "aes" model."""
        texts = [reward_text(self.kind, r, p) for r, p in zip(raws, prompts)]
        device = next(self.model.parameters()).device
        out = []
        for start in range(0, len(texts), self.batch_size):
            ids = encode_reward_texts(self.tokenizer, texts[start:start + self.batch_size], self.max_length)
            batch = self.collate([{"input_ids": i} for i in ids])
            logits = self.model(input_ids=batch["input_ids"].to(device),
                                attention_mask=batch["attention_mask"].to(device)).logits
            out.append(logits.squeeze(-1).float().cpu())
        return torch.cat(out) * self.std + self.mean


@dataclass
class RewardBatch:
    """What a PPO reward function sees for b rollouts."""

    raws: list[str]  # the raw (low-quality) prompts
    responses: list[str]  # the generated prompts, decoded without special tokens
    references: list[str | None]  # the dataset's high-quality prompt per raw prompt, if any
    response_ids: list[list[int]]  # generated token ids up to (without) EOS


class CombinedReward:
    """alpha * r_ps + (1 - alpha) * r_aes of the generated prompt, minus the same of the reference prompt."""

    def __init__(self, r_ps: RewardModel | None, r_aes: RewardModel | None, alpha: float = 0.7,
                 relative: bool = True):
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if (alpha > 0 and r_ps is None) or (alpha < 1 and r_aes is None):
            raise ValueError(f"alpha={alpha} needs {'r_ps' if r_ps is None else 'r_aes'}")
        self.r_ps, self.r_aes, self.alpha, self.relative = r_ps, r_aes, alpha, relative

    def absolute(self, raws: Sequence[str], prompts: Sequence[str]) -> torch.Tensor:
        total = torch.zeros(len(prompts))
        if self.alpha > 0:
            total += self.alpha * self.r_ps.score(raws, prompts)
        if self.alpha < 1:
            total += (1 - self.alpha) * self.r_aes.score(raws, prompts)
        return total

    def __call__(self, batch: RewardBatch) -> torch.Tensor:
        reward = self.absolute(batch.raws, batch.responses)
        if self.relative:
            missing = [i for i, ref in enumerate(batch.references) if not ref]
            if missing:
                raise ValueError(f"relative reward needs a reference prompt; rows {missing[:5]} have none")
            reward -= self.absolute(batch.raws, batch.references)
        return reward
