"""Which vocabulary tokens a hard prompt may use, and the projection onto the nearest of them.

Shapes: b batch, n prompt tokens, d text width, v vocabulary, c candidate tokens, k re-rank width.

Round-trip safety: a prompt is returned as text, and that text must tokenise back to the same ids.
Sub-word pieces (no ``</w>``) glue onto their neighbour when decoded, and some whole-word tokens are
changed by the tokenizer's cleaning (ftfy, HTML unescape, case) or are partial UTF-8 bytes. The
*safe* vocabulary keeps only whole-word tokens whose decoded text, tokenised alone, gives back that
one token; any sequence of them decodes to space-separated words that re-tokenise to the same ids.
"""

from __future__ import annotations

import functools
import logging
from typing import Iterable, Literal, Sequence

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

PAD_ID = 0  # open_clip pads with id 0; never a candidate, as the start and end tokens


@functools.lru_cache(maxsize=4)
def _safe_ids(tokenizer) -> tuple[int, ...]:
    """Whole-word tokens that survive decode -> encode alone (cached per tokenizer)."""
    special = {tokenizer.sot_token_id, tokenizer.eot_token_id, PAD_ID}
    safe = []
    for tok_id, piece in tokenizer.decoder.items():
        if tok_id in special or not piece.endswith("</w>"):
            continue
        if tokenizer.encode(tokenizer.decode([tok_id])) == [tok_id]:
            safe.append(tok_id)
    return tuple(sorted(safe))


def token_texts(tokenizer, ids: Iterable[int]) -> list[str]:
    return [tokenizer.decode([i]).strip().lower() for i in ids]


def ban_words(entries: Iterable[str]) -> list[str]:
    """Normalise a ban-list: lower case, split multi-word entries into their words."""
    words = []
    for entry in entries:
        words.extend(w for w in entry.lower().split() if w)
    return words


class Vocabulary:
    """The candidate tokens of a hard prompt and the projection of continuous prompts onto them.

    The normalised candidate table is computed once here, not every step.
    """

    def __init__(
        self,
        clip,
        *,
        safe: bool = True,
        allow: Sequence[str] | None = None,
        ban: Sequence[str] = (),
        projection: Literal["exact", "fast"] = "fast",
        rerank: int = 8,
    ):
        tok = clip.tokenizer
        special = {tok.sot_token_id, tok.eot_token_id, PAD_ID}
        vocab_size = clip.token_embedding.shape[0]
        if safe:
            ids = list(_safe_ids(tok))
        else:
            ids = [i for i in range(vocab_size) if i not in special]
        self.banned = ban_words(ban)
        if self.banned:
            texts = token_texts(tok, ids)
            ids = [i for i, t in zip(ids, texts) if not any(w in t for w in self.banned)]
        if allow is not None:
            allowed, unused = set(), []
            for word in allow:
                word_ids = [i for i in tok.encode(word) if i not in special]
                if not word_ids:
                    unused.append(word)
                allowed.update(word_ids)
            base = set(ids)
            ids = sorted(allowed & base)
            if unused:
                log.warning("allow-list: %d entries give no token: %s", len(unused), unused[:10])
        if not ids:
            raise ValueError("no candidate tokens left after the allow-list and ban-list")
        self.clip = clip
        self.projection = projection
        self.rerank = rerank
        self.ids = torch.tensor(ids, dtype=torch.long, device=clip.device)  # (c,)
        table = clip.token_embedding.detach()[self.ids].float()
        self.table = table  # (c, d) raw rows, what the text encoder sees
        self.table_n = F.normalize(table, dim=-1)  # (c, d)
        if projection == "fast":
            self.table_low = self.table_n.to(torch.bfloat16)
        elif projection != "exact":
            raise ValueError(f"projection must be 'exact' or 'fast', got {projection!r}")

    def __len__(self) -> int:
        return self.ids.numel()

    @torch.no_grad()
    def project(self, prompt: torch.Tensor) -> torch.Tensor:
        """Nearest candidate ids (b, n) by cosine for continuous prompts (b, n, d).

        ``fast`` ranks all candidates in bfloat16 and re-ranks the best ``rerank`` exactly in fp32,
        which returns the exact argmax unless bf16 rounding pushes it out of the top ``rerank``.
        """
        b, n, d = prompt.shape
        q = prompt.reshape(b * n, d).float()
        if self.projection == "exact":
            local = (q @ self.table_n.T).argmax(dim=-1)
        else:
            k = min(self.rerank, len(self))
            top = (q.to(torch.bfloat16) @ self.table_low.T).topk(k, dim=-1).indices  # (bn, k)
            exact = torch.einsum("qd,qkd->qk", q, self.table_n[top])
            local = top.gather(1, exact.argmax(dim=-1, keepdim=True)).squeeze(1)
        return self.ids[local].reshape(b, n)

    def random_ids(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n random candidate ids (the initial prompt), drawn with ``generator`` on the CPU."""
        pick = torch.randint(len(self), (n,), generator=generator)
        return self.ids.cpu()[pick].to(self.ids.device)


def nearest_ids_bruteforce(prompt: torch.Tensor, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Reference projection: cosine against every row of ``table`` (c, d) normalised on the spot."""
    q = F.normalize(prompt.float(), dim=-1)
    t = F.normalize(table.float(), dim=-1)
    return ids[(q @ t.T).argmax(dim=-1)]
