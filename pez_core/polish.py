"""Polish: discrete coordinate ascent on finished PEZ prompts, under the loop's own objective.

With the fluency prior on, PEZ optimises ``cos - fluency x NLL`` through a projection: a token changes
only when the continuous prompt's nearest neighbour does, so a finished prompt often keeps words that the
prompt LM finds unlikely where they stand ("vivid vivid background violet") although a likelier word
scores as well on CLIP. The polish searches the discrete neighbourhood directly:

- per position, left to right, the prompt LM's ``proposals`` most likely tokens given the prompt to its
  left (only the run's candidate tokens: bans, banks and the round-trip-safe vocabulary hold) replace
  the token, each variant is scored exactly (one CLIP forward, one LM forward), and the best is kept if
  it raises the objective;
- then each adjacent pair is swapped, kept if that raises the objective;
- sweeps repeat until nothing moves or ``sweeps`` ran.

It only ever raises the objective, never lowers it; it needs no gradient. Every row is scored on its own,
so a target's polished prompt does not depend on the others polished with it (the sweeps stop when no
row moves; a row that did not move in a sweep cannot move in a later one, its inputs being unchanged).
Measured in the world (README: Readable prompts): readability 0.58 -> 0.79 at the default fluency.

Shapes: b prompts, n tokens, k feature vectors per target, K proposals, V the prompt LM's vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .pez import similarity
from .prompt_lm import BOS, SPECIALS, PromptLM
from .projection import Vocabulary


@dataclass
class Polished:
    ids: torch.Tensor  # (b, n) the polished prompts
    cosine: torch.Tensor  # (b,) their similarity to the targets
    nll: torch.Tensor  # (b,) their NLL per token under the prompt LM
    moves: list[int]  # per prompt: replacements and swaps kept


@torch.no_grad()
def polish(clip, lm: PromptLM, vocab: Vocabulary, ids: torch.Tensor, feats: torch.Tensor, weights: torch.Tensor,
           fluency: float, proposals: int = 8, sweeps: int = 3) -> Polished:
    """Polish prompts ``ids`` (b, n) toward target features ``feats`` (b, k, e) with averaging ``weights``
    (b, k) under ``similarity - fluency x NLL`` (see the module docstring)."""
    if proposals < 1 or sweeps < 0:
        raise ValueError(f"polish needs proposals >= 1 and sweeps >= 0, got {proposals} and {sweeps}")
    dev = ids.device
    ids = ids.clone()
    b, n = ids.shape
    lm_clip = torch.tensor(lm.vocab.clip_ids, dtype=torch.long, device=dev)  # LM id - SPECIALS -> CLIP id
    ok = torch.isin(lm_clip, vocab.ids.to(dev)).to(lm.device)  # (V - SPECIALS,): candidate tokens of this run
    k = min(proposals, int(ok.sum()))
    feats_k, weights_k = feats.repeat_interleave(k, 0), weights.repeat_interleave(k, 0)  # each row's K variants

    def score(x: torch.Tensor, f: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cos = similarity(clip.encode_ids(x), f, w).to(dev)
        nll = lm.nll(x).to(dev)
        return cos - fluency * nll, cos, nll

    obj, cos, nll = score(ids, feats, weights)
    moves = torch.zeros(b, dtype=torch.long, device=dev)

    def keep(rows: torch.Tensor, trial: torch.Tensor, o, c, l) -> int:
        nonlocal obj, cos, nll
        up = (o > obj + 1e-6) & rows
        ids[up] = trial[up]
        obj, cos, nll = torch.where(up, o, obj), torch.where(up, c, cos), torch.where(up, l, nll)
        moves.add_(up.long())
        return int(up.sum())

    every = torch.ones(b, dtype=torch.bool, device=dev)
    for _ in range(sweeps if k else 0):
        moved = 0
        for i in range(n):  # replacements by the LM's likeliest candidates at position i
            context = torch.cat([torch.full((b, 1), BOS, device=dev), lm.lm_of[ids.to(lm.device)].to(dev)], 1)
            logits = lm.model(input_ids=context[:, : i + 1].to(lm.device)).logits[:, i, SPECIALS:].float()
            logits[:, ~ok] = -torch.inf
            cands = lm_clip[logits.topk(k, dim=1).indices.to(dev)]  # (b, K)
            trial = ids.unsqueeze(1).repeat(1, k, 1)
            trial[:, :, i] = cands
            o, c, l = (t.view(b, k) for t in score(trial.view(b * k, n), feats_k, weights_k))
            best = o.argmax(1, keepdim=True)
            moved += keep(every, trial[torch.arange(b, device=dev), best[:, 0]], o.gather(1, best)[:, 0],
                          c.gather(1, best)[:, 0], l.gather(1, best)[:, 0])
        for i in range(n - 1):  # adjacent swaps
            trial = ids.clone()
            trial[:, [i, i + 1]] = trial[:, [i + 1, i]]
            moved += keep(ids[:, i] != ids[:, i + 1], trial, *score(trial, feats, weights))
        if not moved:
            break
    return Polished(ids, cos, nll, moves.tolist())
