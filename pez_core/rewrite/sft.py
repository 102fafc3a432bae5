"""Supervised fine-tuning of the rewriter: template + completion, loss on the completion only.

Each example is the instruction template with the raw prompt (``templates.sft_texts``' context) followed
by the completion: one space, the high-quality prompt and the EOS token. Labels are -100 on the context,
so the cross-entropy only teaches the model to write the completion, as the paper.

Design: a plain torch loop (``optim.train_step`` with ``sft_loss``) rather than TRL's SFTTrainer. The
masking is twenty lines, TRL is not a dependency of promptmine, its configs default to bf16 (which fails
on CPU), and the same loop shape serves the reward models and PPO inside Ray Train.

Shapes: b examples, t tokens (right-padded).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from .templates import DEFAULT_TEMPLATE, TEMPLATES, sft_texts

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label value the cross-entropy ignores


@dataclass
class SFTConfig:
    lr: float = 2e-5  # AdamW learning rate (paper: 2e-5 for bloom-1b1; ~1e-3 for tiny test models)
    epochs: int = 4  # passes over the pairs (paper: 4)
    batch_size: int = 16  # examples per worker per step (paper: 16 per device)
    max_length: int = 384  # tokens of context + completion; longer completions are cut (paper: 384)
    warmup_ratio: float = 0.03  # share of steps with linear warmup before the cosine decay (paper: 3%)
    weight_decay: float = 0.0  # AdamW weight decay on matrices (0 to 0.1)
    max_grad_norm: float = 1.0  # gradient clipping (0 disables)
    template: str = DEFAULT_TEMPLATE  # instruction template: "v1" (paper) or "v2"
    min_pick_score: float | None = None  # drop pairs with pick_score below this (paper's loader: 18.5)
    min_aesthetic_score: float | None = None  # drop pairs with aesthetic_score below this (paper: its data
    #   are filtered by aesthetic score; no threshold published)
    min_prompt_tokens: int = 0  # drop pairs whose target prompt has fewer tokens (paper's code: 25; 0: off)
    short_prompt_tokens: int = 0  # target prompts under this many tokens are "short" (paper's code: 35)
    short_drop: float = 0.0  # share of short pairs dropped at random (paper's code: 0.3)

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        if self.max_length < 8:
            raise ValueError(f"max_length must be >= 8 tokens, got {self.max_length}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.template not in TEMPLATES:
            raise ValueError(f"unknown template {self.template!r}; valid: {', '.join(sorted(TEMPLATES))}")
        if self.min_prompt_tokens < 0 or self.short_prompt_tokens < 0 or not 0 <= self.short_drop <= 1:
            raise ValueError(f"need min_prompt_tokens, short_prompt_tokens >= 0 and short_drop in [0, 1]; got "
                             f"{self.min_prompt_tokens}, {self.short_prompt_tokens}, {self.short_drop}")


def score_filter(df, cfg: SFTConfig) -> tuple:
    """The rows of the pandas frame ``df`` the SFT score thresholds keep, and how many each threshold dropped
    (reason -> rows). A row with a missing score is dropped by its threshold (a NaN is below every threshold)."""
    dropped = {}
    for column, threshold in (("pick_score", cfg.min_pick_score), ("aesthetic_score", cfg.min_aesthetic_score)):
        if threshold is not None:
            below = ~(df[column] >= threshold)
            if below.any():
                dropped[f"{column} < {threshold:g}"] = int(below.sum())
            df = df[~below]
    return df, dropped


def length_filter(tokenizer, prompts: Sequence[str], cfg: SFTConfig, seed: int = 0) -> list[int]:
    """Indices of the pairs the paper's SFT length filter keeps, judged on the target prompt's tokens.

    Pairs under ``min_prompt_tokens`` are dropped; of those under ``short_prompt_tokens``, a random
    ``short_drop`` share is dropped too (the same rows for the same seed). Off with the defaults.
    """
    if not cfg.min_prompt_tokens and not (cfg.short_prompt_tokens and cfg.short_drop):
        return list(range(len(prompts)))
    rng = random.Random(seed)
    keep = []
    for i, prompt in enumerate(prompts):
        n = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        short = n < cfg.short_prompt_tokens and rng.random() < cfg.short_drop
        if n >= cfg.min_prompt_tokens and not short:
            keep.append(i)
    log.info("length filter kept %d of %d pairs", len(keep), len(prompts))
    return keep


def context_ids(tokenizer, raw: str, template: str = DEFAULT_TEMPLATE) -> list[int]:
    """Token ids of the template with ``raw`` (what the rewriter and PPO feed the model)."""
    context, _ = sft_texts(raw, "x", template)
    return tokenizer(context)["input_ids"]


def encode_pair(tokenizer, raw: str, prompt: str, template: str = DEFAULT_TEMPLATE,
                max_length: int = 384) -> dict[str, list[int]] | None:
    """input_ids and labels of one pair; labels are IGNORE_INDEX on the context.

    Context and completion are tokenised separately and concatenated, so the boundary of the mask is
    exact and the context tokens equal those the model sees at generation time. The completion is cut
    to fit ``max_length`` (keeping at least one token); returns None when the context alone does not fit.
    Raises ValueError for an empty raw prompt or target (from ``sft_texts``).
    """
    context, completion = sft_texts(raw, prompt, template)
    ctx = tokenizer(context)["input_ids"]
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token: the completion could never end")
    comp = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    room = max_length - len(ctx)
    if room < 1:
        return None
    comp = comp[:room]
    return {"input_ids": ctx + comp, "labels": [IGNORE_INDEX] * len(ctx) + comp}


class PairDataset(torch.utils.data.Dataset):
    """Encoded (raw, prompt) pairs; rows whose context does not fit ``max_length`` are skipped and counted."""

    def __init__(self, tokenizer, raws: Sequence[str], prompts: Sequence[str],
                 template: str = DEFAULT_TEMPLATE, max_length: int = 384):
        if len(raws) != len(prompts):
            raise ValueError(f"{len(raws)} raw prompts but {len(prompts)} target prompts")
        self.examples, self.skipped = [], 0
        for raw, prompt in zip(raws, prompts):
            example = encode_pair(tokenizer, raw, prompt, template, max_length)
            if example is None:
                self.skipped += 1
            else:
                self.examples.append(example)
        if self.skipped:
            log.warning("skipped %d of %d pairs whose context exceeds %d tokens", self.skipped, len(raws), max_length)
        if not self.examples:
            raise ValueError(f"no usable pairs out of {len(raws)} (all empty or longer than {max_length} tokens)")

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.examples[i]


class PadCollator:
    """Right-pads input_ids (pad id), labels (IGNORE_INDEX) and builds the attention mask."""

    def __init__(self, pad_token_id: int):
        if pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token first")
        self.pad_token_id = pad_token_id

    def __call__(self, examples: Iterable[dict]) -> dict[str, torch.Tensor]:
        examples = list(examples)
        t = max(len(e["input_ids"]) for e in examples)
        out = {"input_ids": torch.full((len(examples), t), self.pad_token_id, dtype=torch.long),
               "attention_mask": torch.zeros((len(examples), t), dtype=torch.long)}
        if "labels" in examples[0]:
            out["labels"] = torch.full((len(examples), t), IGNORE_INDEX, dtype=torch.long)
        for i, e in enumerate(examples):
            n = len(e["input_ids"])
            out["input_ids"][i, :n] = torch.tensor(e["input_ids"])
            out["attention_mask"][i, :n] = 1
            if "labels" in out:
                out["labels"][i, :n] = torch.tensor(e["labels"])
        return out


def sft_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the completion tokens of ``batch`` (labels shifted inside the model)."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, loader) -> float:
    """Token-weighted mean completion loss over ``loader`` (no gradient)."""
    model.eval()
    total, tokens = 0.0, 0
    for batch in loader:
        n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        total += float(sft_loss(model, batch)) * n
        tokens += n
    return total / max(tokens, 1)
