"""Which vocabulary tokens a hard prompt may use, and the projection onto the nearest of them.

Shapes: b batch, n prompt tokens, d text width, v vocabulary, c candidate tokens, k re-rank width.

Round-trip safety: a prompt is returned as text, and that text must tokenise back to the same ids.
Sub-word pieces (no ``</w>``) glue onto their neighbour when decoded, and some whole-word tokens are
changed by the tokenizer's cleaning (ftfy, HTML unescape, case) or are partial UTF-8 bytes. The
*safe* vocabulary keeps only whole-word tokens whose decoded text, tokenised alone, gives back that
one token; any sequence of them decodes to space-separated words that re-tokenise to the same ids.
"""

from __future__ import annotations

import logging
import string
from collections.abc import Iterable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

ST_TEMPERATURE = 0.03  # straight_through: softmax temperature on cosines (README: fluency; 0.01..0.3 measured)
ST_TOP_K = 64  # straight_through: the nearest candidates the fluency gradient weighs
PAD_ID = 0  # open_clip pads with id 0; never a candidate, as the start and end tokens


def _safe_ids(tokenizer) -> tuple[int, ...]:
    """Whole-word tokens that survive decode -> encode alone (cached per vocabulary: every CLIP loaded
    has its own tokenizer object, and most share CLIP's BPE table)."""
    key = (type(tokenizer).__name__, tokenizer.sot_token_id, tokenizer.eot_token_id, tuple(tokenizer.decoder.items()))
    if key not in _SAFE_IDS:
        if len(_SAFE_IDS) >= 4:
            _SAFE_IDS.pop(next(iter(_SAFE_IDS)))
        _SAFE_IDS[key] = _find_safe_ids(tokenizer)
    return _SAFE_IDS[key]


_SAFE_IDS: dict[tuple, tuple[int, ...]] = {}


def _find_safe_ids(tokenizer) -> tuple[int, ...]:
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
    """Normalise a ban-list: lower case, each entry split into its words, punctuation at a word's ends
    dropped ("Cat," -> "cat"; a word of punctuation alone is kept as it is)."""
    words = []
    for entry in entries:
        words.extend(w.strip(string.punctuation) or w for w in entry.lower().split())
    return words


def banned_ids(tokenizer, ids: Iterable[int], words: Sequence[str] = (), substrings: Sequence[str] = ()) -> set[int]:
    """The ids among ``ids`` that a ban-list removes (``words`` and ``substrings`` as :func:`ban_words` gives).

    A token's *word* is its text without ``</w>``, lower-cased and stripped. ``words`` bans whole words:
    a whole-word token is removed iff its word is a banned word, so banning "cat" keeps "education" and
    "cats". ``substrings`` is the conservative mode for safety filters: a token is removed iff its word
    contains a banned string.

    Sub-word pieces (no ``</w>``; candidates only outside the safe vocabulary) glue onto the next token
    when decoded, so a banned word could be spelt from pieces ("ca" + "t" -> "cat"). Every such spelling
    starts with a piece that is a prefix of the word (leading punctuation aside), so in whole-word mode a
    piece is also removed iff it is a non-empty prefix of a banned word ("c", "ca", "cat": this costs
    "cat" as the start of "catalog"). In substring mode a piece is also removed iff it ends with a
    non-empty proper prefix of a banned string (the join could complete it: "edu" + "cation" with "cat").
    """
    words, substrings = set(words), list(substrings)
    prefixes = {w[:k] for w in words for k in range(1, len(w) + 1)}
    out = set()
    for i in ids:
        word = tokenizer.decode([i]).strip().lower()
        piece = not tokenizer.decoder[i].endswith("</w>")
        glue = piece and (word.lstrip(string.punctuation) in prefixes
                          or any(word.endswith(s[:k]) for s in substrings for k in range(1, len(s))))
        if glue or word in words or any(s in word for s in substrings):
            out.add(i)
    return out


def bank_report(tokenizer, allow: Sequence[str], candidates: set[int]) -> dict[str, list[str]]:
    """The keyword-bank entries a prompt cannot use as CLIP reads them: entry -> the texts of its tokens
    that are candidates (fragments, such as "photorealistic" -> ["realistic"] in the safe vocabulary,
    whose "photo" is a sub-word piece; [] when none is). An entry is usable iff every token of it is a
    whole-word candidate ("oil painting", and "4k", which CLIP reads as "4 k")."""
    report = {}
    for entry in allow:
        ids = tokenizer.encode(entry)
        if not ids or not all(i in candidates and tokenizer.decoder[i].endswith("</w>") for i in ids):
            report[entry] = token_texts(tokenizer, [i for i in ids if i in candidates])
    return report


def describe_bank_report(report: dict[str, list[str]], limit: int | None = None) -> str:
    """One line: photorealistic -> only 'realistic'; zzz -> no token."""
    items = list(report.items())
    parts = [f"{e} -> only " + " ".join(repr(t) for t in kept) if kept else f"{e} -> no token"
             for e, kept in items[:limit]]
    more = f"; and {len(items) - limit} more" if limit is not None and len(items) > limit else ""
    return "; ".join(parts) + more


def normalize_parts(x: torch.Tensor, widths: Sequence[int] | None) -> torch.Tensor:
    """Rows normalised as a whole, or each of the consecutive parts of these ``widths`` on its own (the
    token table of several text encoders side by side: a dot product is then the sum of their cosines)."""
    if not widths:
        return F.normalize(x, dim=-1)
    return torch.cat([F.normalize(p, dim=-1) for p in x.split(list(widths), dim=-1)], dim=-1)


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
        ban_substring: Sequence[str] = (),
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
        self.banned, self.banned_substrings = ban_words(ban), ban_words(ban_substring)
        if self.banned or self.banned_substrings:
            drop = banned_ids(tok, ids, self.banned, self.banned_substrings)
            ids = [i for i in ids if i not in drop]
        self.bank_report: dict[str, list[str]] = {}  # keyword-bank entries not usable as written
        if allow is not None:
            allowed = {i for word in allow for i in tok.encode(word) if i not in special}
            ids = sorted(allowed & set(ids))
            self.bank_report = bank_report(tok, allow, set(ids))
            if self.bank_report:
                log.warning("keyword bank: %d of %d entries only as fragments or not at all: %s",
                            len(self.bank_report), len(allow), describe_bank_report(self.bank_report, limit=10))
        if not ids:
            raise ValueError("no candidate tokens left after the allow-list and ban-list")
        self.clip = clip
        self.projection = projection
        self.rerank = rerank
        self.ids = torch.tensor(ids, dtype=torch.long, device=clip.device)  # (c,)
        table = clip.token_embedding.detach()[self.ids].float()
        self.table = table  # (c, d) raw rows, what the text encoder sees
        self.widths = getattr(clip, "part_widths", None)  # several text encoders side by side (joint.py)
        self.table_n = normalize_parts(table, self.widths)  # (c, d)
        if projection not in ("exact", "fast"):
            raise ValueError(f"projection must be 'exact' or 'fast', got {projection!r}")
        # (u,) the candidate index standing for each distinct row, and those rows normalised: what project searches
        self.stands_for = _distinct_rows(table, self.ids, tok, getattr(clip, "tied_word", None))
        tied = len(self.stands_for) < len(ids)
        self.distinct_n = self.table_n[self.stands_for] if tied else self.table_n  # (u, d)
        self.table_low = self.table_n.to(torch.bfloat16) if projection == "fast" else None
        self.distinct_low = self.distinct_n.to(torch.bfloat16) if projection == "fast" and tied else self.table_low

    @classmethod
    def from_config(cls, clip, cfg) -> Vocabulary:
        """The candidates a PEZConfig asks for."""
        return cls(clip, safe=cfg.safe_vocab, allow=cfg.allow, ban=cfg.ban, ban_substring=cfg.ban_substring,
                   projection=cfg.projection)

    def __len__(self) -> int:
        return self.ids.numel()

    @torch.no_grad()
    def project(self, prompt: torch.Tensor, neighbours: int = 0):
        """Nearest candidate ids (b, n) by cosine for continuous prompts (b, n, d); for several encoders
        side by side (``clip.part_widths``), by the sum of their cosines.

        The search runs over the *distinct* rows of the candidate table (:func:`_distinct_rows`): tokens
        with one embedding are one candidate, returned as the id that stands for them. ``fast`` ranks the
        rows in bfloat16 and re-ranks the best ``rerank`` exactly in fp32, which returns the exact argmax
        unless bf16 rounding pushes it out of the top ``rerank``.
        With ``neighbours`` k > 0, returns ``(ids, near)``: ``near`` (b * n, k) are the candidate indices of
        each position's k nearest tokens by the same ranking over every candidate (tied ones included),
        its own token among them (for :meth:`straight_through`).
        """
        b, n, d = prompt.shape
        q = prompt.reshape(b * n, d).float()
        if self.widths:  # each part's cosine counts once, whatever the norms of the two halves
            q = normalize_parts(q, self.widths)
        if not neighbours:
            return self.ids[self.stands_for[self._nearest(q, self.distinct_n, self.distinct_low)]].reshape(b, n)
        k = min(max(self.rerank, neighbours), len(self))
        if self.projection == "exact":
            scores = q @ self.table_n.T
            local = scores.argmax(dim=-1)
            top = scores.topk(k, dim=-1).indices
        else:
            top = (q.to(torch.bfloat16) @ self.table_low.T).topk(k, dim=-1).indices  # (bn, k), best first
            local = _rerank(q, self.table_n, top[:, : min(self.rerank, len(self))])
        ids = self.ids[local].reshape(b, n)
        near = top[:, : min(neighbours, len(self))].clone()
        missing = ~(near == local[:, None]).any(dim=-1)  # bf16 ties or tied rows can crowd it out
        near[missing, -1] = local[missing]
        return ids, near

    def _nearest(self, q: torch.Tensor, rows_n: torch.Tensor, low: torch.Tensor | None) -> torch.Tensor:
        """Index (bn,) of the row of ``rows_n`` (r, d) nearest each query of ``q`` (bn, d): exact fp32
        scores, or with ``low`` (the rows in bfloat16) the fp32 best of the ``rerank`` best in bf16."""
        if low is None:
            return (q @ rows_n.T).argmax(dim=-1)
        first = (q.to(torch.bfloat16) @ low.T).topk(min(self.rerank, rows_n.shape[0]), dim=-1).indices
        return _rerank(q, rows_n, first)

    def straight_through(self, prompt: torch.Tensor, ids: torch.Tensor,
                         near: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The projection of the continuous ``prompt`` (b, n, d) onto ``ids`` (b, n) as token distributions
        ``(q, token_ids)``, both (b, n, k), over each position's nearest candidates ``near`` (b * n, k) from
        ``project(prompt, neighbours=k)``. ``q`` is one-hot at ``ids`` in the forward pass (to float rounding), with the
        gradient of softmax(cos(prompt, neighbours) / ST_TEMPERATURE) in the backward one: a loss on token
        ids (the fluency NLL) moves each position toward the neighbouring tokens it prefers, which is how
        the continuous prompt changes the tokens it projects to."""
        b, n, d = prompt.shape
        k = near.shape[1]
        q = normalize_parts(prompt.float(), self.widths).reshape(b * n, d)
        soft = (torch.einsum("qd,qkd->qk", q, self.table_n[near]) / ST_TEMPERATURE).softmax(-1)
        hard = (self.ids[near] == ids.reshape(b * n, 1)).to(soft)  # near's entries are distinct: one match
        return (hard + soft - soft.detach()).reshape(b, n, k), self.ids[near].reshape(b, n, k)

    def random_ids(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n random candidate ids (the initial prompt), drawn with ``generator`` on the CPU."""
        pick = torch.randint(len(self), (n,), generator=generator)
        return self.ids.cpu()[pick].to(self.ids.device)


def _rerank(q: torch.Tensor, rows_n: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """Of each query's candidate rows ``first`` (bn, k), the index of the one nearest in fp32."""
    exact = torch.einsum("qd,qkd->qk", q, rows_n[first])
    return first.gather(1, exact.argmax(dim=-1, keepdim=True)).squeeze(1)


def _distinct_rows(table: torch.Tensor, ids: torch.Tensor, tokenizer, tied_word: str | None) -> torch.Tensor:
    """For each distinct row of the candidate ``table`` (c, d), the candidate index that stands for every
    token sharing it (u,), in increasing order: the token of ``tied_word`` where it is one of them (a
    world CLIP ties every token it never trained to the word "unknown"), else the lowest id. Tied tokens
    read the same to the text encoder, so searching the u distinct rows is exact; a CLIP with no tied rows
    keeps c = u rows."""
    rows, inverse = torch.unique(table, dim=0, return_inverse=True)
    if rows.shape[0] == table.shape[0]:
        return torch.arange(table.shape[0], device=table.device)
    index = torch.arange(table.shape[0], device=table.device)
    stands_for = torch.full((rows.shape[0],), table.shape[0], device=table.device).scatter_reduce(
        0, inverse, index, reduce="amin")  # ids are sorted, so the lowest index is the lowest id
    if tied_word is not None:
        word = tokenizer.encode(tied_word)
        hit = (ids == word[0]).nonzero() if len(word) == 1 else ids[:0]
        if hit.numel():
            stands_for[inverse[hit[0, 0]]] = hit[0, 0]
    return stands_for.sort().values  # the candidates' order: a tie between distinct rows breaks as before


def nearest_ids_bruteforce(prompt: torch.Tensor, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Reference projection: cosine against every row of ``table`` (c, d) normalised on the spot."""
    q = F.normalize(prompt.float(), dim=-1)
    t = F.normalize(table.float(), dim=-1)
    return ids[(q @ t.T).argmax(dim=-1)]
