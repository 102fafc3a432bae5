"""Several CLIP text encoders reading one token sequence at once (SDXL's two), as one ClipModel-like model.

Shapes: b batch, n prompt tokens, d_i encoder i's text width, e_i its embedding width, m encoders.

The adaptor needs no change to the PEZ loop. Its token table is the encoders' tables side by side,
(v, d_1 + ... + d_m), so a continuous prompt is one continuous prompt per encoder, each moved by its own
encoder's gradient. Its features are the encoders' normalised features side by side, divided by
sqrt(m): a unit vector whose cosine with another is the MEAN of the per-encoder cosines. So the loss
1 - cos is 1 - the mean cosine, and the image target is every encoder's image features at once. The
projection (projection.Vocabulary, through ``part_widths``) normalises each encoder's part of the prompt
and of the table on its own, so the nearest token is the one with the largest SUM of per-encoder cosines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F


def _embed_width(clip) -> int:
    proj = clip.model.text_projection
    if proj is None:
        return clip.token_embedding.shape[1]
    return proj.out_features if isinstance(proj, torch.nn.Linear) else proj.shape[1]


class JointClip:
    """The text encoders of ``parts`` (ClipModels over one vocabulary) as one model for PEZ."""

    def __init__(self, parts: Sequence, name: str):
        if len(parts) < 2:
            raise ValueError(f"{name}: a joint CLIP needs at least two encoders, got {len(parts)}")
        first = parts[0]
        for p in parts[1:]:
            if p.token_embedding.shape[0] != first.token_embedding.shape[0] or \
                    p.tokenizer.encoder != first.tokenizer.encoder:
                raise ValueError(f"{name}: {p.name} and {first.name} do not share one token vocabulary")
            if p.device != first.device:
                raise ValueError(f"{name}: {p.name} is on {p.device}, {first.name} on {first.device}")
        self.parts = list(parts)
        self.name = name
        self.device = first.device
        self.tokenizer = first.tokenizer
        self.part_widths = tuple(p.token_embedding.shape[1] for p in parts)  # (d_1, ..., d_m)
        words = {getattr(p, "tied_word", None) for p in parts}
        self.tied_word = words.pop() if len(words) == 1 else None  # a token tied in every part stands for its ties
        self.embed_widths = tuple(_embed_width(p) for p in parts)  # (e_1, ..., e_m)
        self._table = torch.cat([p.token_embedding.detach().float() for p in parts], dim=1)  # (v, sum d)

    @property
    def token_embedding(self) -> torch.Tensor:  # (v, d_1 + ... + d_m)
        return self._table

    @property
    def sot_id(self) -> int:
        return self.tokenizer.sot_token_id

    @property
    def eot_id(self) -> int:
        return self.tokenizer.eot_token_id

    @property
    def context_length(self) -> int:
        return min(p.context_length for p in self.parts)

    @property
    def image_size(self) -> int:
        return max(p.image_size for p in self.parts)

    def tokenize(self, text: str) -> list[int]:
        return self.parts[0].tokenize(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.parts[0].decode(ids)

    # ---- joint features: unit vectors whose cosine is the mean of the encoders' cosines ---------
    def _join(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([F.normalize(f.float(), dim=-1) for f in features], dim=-1) / math.sqrt(len(features))

    def split(self, features: torch.Tensor) -> list[torch.Tensor]:
        """Joint features (..., sum e) -> each encoder's normalised features (..., e_i)."""
        return [F.normalize(f, dim=-1) for f in features.float().split(list(self.embed_widths), dim=-1)]

    @torch.no_grad()
    def encode_images(self, images: Sequence) -> torch.Tensor:
        """Joint image features (k, sum e), each encoder through its own preprocessing."""
        return self._join([p.encode_images(images) for p in self.parts])

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return self._join([p.encode_texts(texts) for p in self.parts])

    @torch.no_grad()
    def encode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self._join([p.encode_ids(ids) for p in self.parts])

    def encode_embeds(self, prompt: torch.Tensor, context: Literal["short", "full"] = "short") -> torch.Tensor:
        """Joint features (b, sum e) of joint prompt embeddings (b, n, sum d): each encoder reads its part."""
        chunks = prompt.split(list(self.part_widths), dim=-1)
        return self._join([p.encode_embeds(x, context) for p, x in zip(self.parts, chunks)])

    @torch.no_grad()
    def encoder_cosines(self, ids: Sequence[int], features: torch.Tensor, weights: torch.Tensor) -> dict[str, float]:
        """Each encoder's own mean cosine of the prompt ``ids`` to a target's joint features (k, sum e)
        with averaging weights (k,): what the prompt scores on that encoder alone."""
        ids_t = torch.tensor([list(ids)], device=self.device)
        out = {}
        for p, target in zip(self.parts, self.split(features.to(self.device))):
            text = p.encode_ids(ids_t)[0]  # (e_i,)
            out[p.name] = float(((target @ text) * weights.to(self.device)).sum())
        return out
