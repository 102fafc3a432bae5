"""A fluency prior for image prompts: a small causal LM over CLIP's own BPE tokens.

The PEZ paper adds a fluency term (the prompt's negative log-likelihood under a language model) only for
language-model prompts, because no LM shares CLIP's tokenizer. This module supplies one: a causal LM
(any ``AutoModelForCausalLM``; ``promptmine train prompt-lm`` trains a GPT-2) whose vocabulary is a
set of CLIP token ids, so PEZ can score and differentiate the likelihood of the very tokens it projects to.

The LM's vocabulary is ``[BOS, EOS, UNK] + clip_ids``: the CLIP tokens that occur in its training prompts.
Every other CLIP token is UNK, and UNK's probability is shared evenly among them, so ``nll`` is a proper
negative log-likelihood over all of CLIP's tokens (a prompt full of unseen tokens is very unlikely, as it
should be) while the LM stays as small as the language it was trained on (the world's: 69 rows).
A prompt of n tokens is read as ``BOS t1 .. tn EOS``; its NLL is the mean over the n + 1 predictions.

A saved prompt LM is a ``save_pretrained`` folder plus ``prompt_lm.json`` (the CLIP ids). The shipped
``world`` one (package data beside the world CLIP) was trained on world captions by the same command.

``nll_soft`` is the differentiable form PEZ uses: token distributions instead of ids, exact for one-hot
rows; ``Vocabulary.straight_through`` builds PEZ's distributions from the projected prompt.
(Not to be confused with lm_prompt.py: hard prompts FOR a language-model classifier.)
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .presets import WORLD_DIR

VOCAB_FILE = "prompt_lm.json"
BOS, EOS, UNK = 0, 1, 2
SPECIALS = 3
CLIP_VOCAB_SIZE = 49408  # every preset's CLIP tokenizer
PRESETS = {"world": WORLD_DIR / "prompt-lm"}  # shipped prompt LMs (package data beside the world CLIPs)


@dataclass
class PromptLMConfig:
    """The recipe of ``promptmine train prompt-lm`` (a GPT-2 from scratch over the table's CLIP tokens)."""

    layers: int = 2
    width: int = 64
    heads: int = 2
    epochs: int = 4
    lr: float = 2e-3
    batch_size: int = 64
    weight_decay: float = 0.01
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    max_length: int = 40  # CLIP tokens kept per prompt (CLIP itself reads 75)
    min_count: int = 1  # a CLIP token seen fewer times than this in the table is UNK
    column: str = "prompt"

    def __post_init__(self):
        for name in ("layers", "width", "heads", "epochs", "batch_size", "max_length", "min_count"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


class PromptVocab:
    """CLIP token id <-> LM id. ``save_pretrained`` / ``from_pretrained`` keep it beside the LM's weights."""

    def __init__(self, clip_ids: Sequence[int], clip_vocab_size: int = CLIP_VOCAB_SIZE):
        self.clip_ids = sorted(set(int(i) for i in clip_ids))
        if any(not 0 <= i < clip_vocab_size for i in self.clip_ids):
            raise ValueError(f"CLIP ids must be in [0, {clip_vocab_size})")
        self.clip_vocab_size = clip_vocab_size
        self.lm_of = torch.full((clip_vocab_size,), UNK, dtype=torch.long)  # (V_clip,)
        self.lm_of[torch.tensor(self.clip_ids, dtype=torch.long)] = torch.arange(len(self.clip_ids)) + SPECIALS
        unseen = clip_vocab_size - len(self.clip_ids)
        self.log_share = torch.zeros(len(self))  # log of how many CLIP tokens each LM id stands for
        self.log_share[UNK] = math.log(max(1, unseen))

    def __len__(self) -> int:
        return SPECIALS + len(self.clip_ids)

    pad_token_id = EOS  # padding positions carry EOS and are masked out of the loss

    @classmethod
    def from_token_lists(cls, token_lists: Iterable[Sequence[int]], min_count: int = 1) -> PromptVocab:
        counts: dict[int, int] = {}
        for ids in token_lists:
            for i in ids:
                counts[i] = counts.get(i, 0) + 1
        return cls([i for i, c in counts.items() if c >= min_count])

    def encode(self, clip_ids: Sequence[int]) -> list[int]:
        """``[BOS] + LM ids + [EOS]`` of one prompt's CLIP token ids."""
        return [BOS, *self.lm_of[torch.tensor(list(clip_ids), dtype=torch.long)].tolist(), EOS]

    def save_pretrained(self, folder: str | Path) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / VOCAB_FILE).write_text(json.dumps(
            {"format": 1, "clip_vocab_size": self.clip_vocab_size, "bos": BOS, "eos": EOS, "unk": UNK,
             "clip_ids": self.clip_ids}))

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> PromptVocab:
        path = Path(folder) / VOCAB_FILE
        if not path.is_file():
            raise ValueError(f"{folder}: not a prompt LM (no {VOCAB_FILE}; train one with "
                             f"`promptmine train prompt-lm`)")
        data = json.loads(path.read_text())
        return cls(data["clip_ids"], data["clip_vocab_size"])


def build_lm(vocab: PromptVocab, cfg: PromptLMConfig, seed: int = 0):
    """A randomly initialised GPT-2 over ``vocab`` (tied input/output embeddings)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(vocab), n_positions=77, n_embd=cfg.width,  # 77: any PEZ prompt (<= 75)
                        n_layer=cfg.layers, n_head=cfg.heads, bos_token_id=BOS, eos_token_id=EOS,
                        pad_token_id=EOS, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)


class PromptLM:
    """A trained prompt LM on a device: ``nll`` of CLIP token id prompts, ``nll_soft`` of distributions."""

    def __init__(self, model, vocab: PromptVocab, device: str | torch.device = "cpu"):
        self.model = model.to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.vocab, self.device = vocab, torch.device(device)
        self.lm_of = vocab.lm_of.to(self.device)
        self.log_share = vocab.log_share.to(self.device)
        self.max_tokens = int(getattr(model.config, "n_positions", 1 << 30)) - 2

    @classmethod
    def load(cls, name_or_folder: str, device: str | torch.device = "cpu") -> PromptLM:
        """A preset (``world``) or a folder written by ``promptmine train prompt-lm`` (OUTPUT/model)."""
        from transformers import AutoModelForCausalLM

        folder = PRESETS.get(name_or_folder, Path(name_or_folder))
        if not Path(folder).is_dir():
            raise ValueError(f"prompt LM {name_or_folder!r}: not a preset ({', '.join(PRESETS)}) or a folder")
        vocab = PromptVocab.from_pretrained(folder)
        return cls(AutoModelForCausalLM.from_pretrained(folder), vocab, device)

    _cache: dict = {}

    @classmethod
    def cached(cls, name_or_folder: str, device: str | torch.device = "cpu") -> PromptLM:
        """:meth:`load`, once per (name, device) per process (every PEZ stream of a job shares it)."""
        key = (str(name_or_folder), str(torch.device(device)))
        if key not in cls._cache:
            cls._cache[key] = cls.load(name_or_folder, device)
        return cls._cache[key]

    def _check(self, n: int) -> None:
        if n > self.max_tokens:
            raise ValueError(f"prompt of {n} tokens: this prompt LM reads at most {self.max_tokens}")

    @torch.no_grad()
    def nll(self, ids: torch.Tensor | Sequence[Sequence[int]]) -> torch.Tensor:
        """Mean negative log-likelihood (b,) in nats per token of prompts given as CLIP ids (b, n)."""
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.device)
        b, n = ids.shape
        self._check(n)
        lm = self.lm_of[ids]
        bos = torch.full((b, 1), BOS, dtype=torch.long, device=self.device)
        eos = torch.full((b, 1), EOS, dtype=torch.long, device=self.device)
        logp = self.model(input_ids=torch.cat([bos, lm], 1)).logits.float().log_softmax(-1)  # (b, n+1, V)
        target = torch.cat([lm, eos], 1)
        picked = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1) - self.log_share[target]
        return -picked.mean(-1)

    def nll_soft(self, q: torch.Tensor, clip_ids: torch.Tensor) -> torch.Tensor:
        """The same NLL (b,) for prompts given as distributions ``q`` (b, n, k) over CLIP tokens ``clip_ids``
        ((b, n, k), or (k,) shared by every position): inputs are the expected embeddings, targets the
        expected log-probabilities. Equal to :meth:`nll` when every row of ``q`` is one-hot; differentiable in ``q``."""
        b, n, _ = q.shape
        self._check(n)
        emb = self.model.get_input_embeddings().weight  # (V, w)
        index = self.lm_of[clip_ids].expand_as(q)
        q_lm = q.new_zeros(b, n, emb.shape[0]).scatter_add(2, index, q)  # (b, n, V)
        inputs = torch.cat([emb[BOS].expand(b, 1, -1), q_lm.to(emb.dtype) @ emb], 1)  # (b, n+1, w)
        logp = self.model(inputs_embeds=inputs).logits.float().log_softmax(-1) - self.log_share  # (b, n+1, V)
        target = torch.cat([q_lm, F.one_hot(torch.full((b, 1), EOS, device=q.device), emb.shape[0]).to(q_lm)], 1)
        return -(target * logp).sum(-1).mean(-1)
