"""Reference mode: Algorithm 1 as the authors' code runs it, kept as the honest baseline.

One target at a time; the prompt sits in the padded 77-token context; every step re-normalises the
whole embedding table and projects over all of it (start and end tokens included); torch's AdamW; after
the gradient step a second, no-grad forward scores the projected prompt, and the decoded text of the
best one is kept. Everything else (encoder, targets, similarity, initialisation) is shared with pez.py.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from .clip import ClipModel
from .pez import PEZConfig, PEZResult, Target, initial_prompts, similarity, stack_targets, target_seeds
from .projection import nearest_ids_bruteforce


class _WholeVocabulary:
    """Every token id, as the authors' projection searches them (used for the initial prompt)."""

    def __init__(self, clip: ClipModel):
        self.clip = clip
        self.ids = torch.arange(clip.token_embedding.shape[0], device=clip.device)

    def __len__(self) -> int:
        return self.ids.numel()

    def random_ids(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(len(self), (n,), generator=generator).to(self.ids.device)


def invert_reference(
    clip: ClipModel,
    targets: Sequence[Target],
    config: PEZConfig | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> list[PEZResult]:
    """Optimise the targets one after another, exactly as the paper's code does.
    ``on_step(step, target_index)`` is called after every step."""
    cfg = config or PEZConfig()
    vocab = _WholeVocabulary(clip)
    seeds = target_seeds(targets, cfg.seed)
    return [_invert_one(clip, vocab, t, s, cfg, i, on_step) for i, (t, s) in enumerate(zip(targets, seeds))]


def _invert_one(clip, vocab, target: Target, seed: int, cfg: PEZConfig, index: int, on_step) -> PEZResult:
    feats, weights = stack_targets([target], clip.device)
    prompt = initial_prompts(vocab, [seed], cfg.prompt_len).to(clip.device).requires_grad_(True)
    opt = torch.optim.AdamW([prompt], lr=cfg.lr, weight_decay=cfg.weight_decay)
    table = clip.token_embedding.detach()
    best_cos, best_ids, best_text, best_step = -math.inf, None, "", 0
    for step in range(cfg.steps):
        ids = nearest_ids_bruteforce(prompt.detach(), table, vocab.ids)  # table normalised again
        projected = table[ids].float().requires_grad_(True)
        sim = similarity(clip.encode_embeds(projected, context="full"), feats, weights)
        (prompt.grad,) = torch.autograd.grad((1 - sim).sum(), projected)
        opt.step()
        opt.zero_grad()
        with torch.no_grad():  # the authors' separate scoring pass
            score = float(similarity(clip.encode_embeds(table[ids].float(), context="full"), feats, weights)[0])
        if score > best_cos:
            best_cos, best_ids, best_step = score, ids[0].tolist(), step
            best_text = clip.decode(best_ids)
        if on_step is not None:
            on_step(step, index)
    return PEZResult(best_text, best_ids, best_cos, best_step, cfg.steps, target.kind, {"mode": "reference"})
