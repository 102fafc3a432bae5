"""Hard prompts for language-model classifiers: the PEZ paper's section 5, applied to a causal LM.

A prompt of n tokens is placed before each example's text (``PROMPT TEXT SUFFIX``); the class is read
from the LM's next-token logits at the last position, restricted to one verbalizer token per label
("great" / "terrible"). PEZ as for CLIP: keep a continuous prompt P (n, d) in the LM's input-embedding
space, project it to the nearest vocabulary embeddings (cosine) before every forward, take the
gradient at the projected prompt, update P. Loss per minibatch of examples:

    cross-entropy over the verbalizer logits  +  fluency x mean negative log-likelihood of the prompt

(the paper's lambda = 0.003; the NLL is the LM's own, of prompt token i+1 given tokens <= i). The
prompt kept is the one with the best accuracy on the training examples, checked every ``eval_every``
steps. Plain torch + transformers; the model is frozen.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


@dataclass
class LMPromptConfig:
    prompt_len: int = 8  # tokens in the hard prompt
    steps: int = 200  # optimiser steps (one minibatch each)
    batch_size: int = 32  # examples per step (paper: 32)
    lr: float = 0.1
    weight_decay: float = 0.1  # AdamW only
    optimizer: str = "adamw"  # adamw | adafactor (the paper's, transformers.optimization.Adafactor)
    fluency: float = 0.003  # weight of the prompt's NLL (paper: 0.003); 0 = task loss only
    suffix: str = ""  # text after each example, before the answer (e.g. " =" or " sentiment:")
    eval_every: int = 10  # steps between accuracy checks of the current prompt (the best is kept)
    seed: int = 0

    def __post_init__(self):
        if self.prompt_len < 1 or self.steps < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise ValueError("prompt_len, steps, batch_size and eval_every must be >= 1")
        if not self.lr > 0 or self.weight_decay < 0 or self.fluency < 0:
            raise ValueError(f"lr must be > 0, weight_decay and fluency >= 0; got {self.lr}, "
                             f"{self.weight_decay}, {self.fluency}")
        if self.optimizer not in ("adamw", "adafactor"):
            raise ValueError(f"optimizer must be adamw or adafactor, got {self.optimizer!r}")


@dataclass
class LMPromptResult:
    text: str  # the prompt as text (decoded ids)
    token_ids: list[int]
    train_accuracy: float  # of the kept prompt, on the training examples
    best_step: int
    history: list[dict] = field(default_factory=list)  # step, task_loss, fluency_nll, accuracy


def verbalizer_ids(tokenizer, verbalizers: Mapping[str, str]) -> dict[str, int]:
    """label -> the one token id of its verbalizer word (tokenised as it follows a space in running
    text when the tokenizer marks spaces); a word that is not a single token is a clear error."""
    out = {}
    for label, word in verbalizers.items():
        ids = tokenizer.encode(" " + word.strip(), add_special_tokens=False)
        if len(ids) != 1:
            ids = tokenizer.encode(word.strip(), add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"verbalizer {label}={word!r} is {len(ids)} tokens for this tokenizer; "
                             "each label needs a single-token word")
        out[label] = ids[0]
    if len(set(out.values())) != len(out):
        raise ValueError(f"two labels share a verbalizer token: {verbalizers}")
    return out


def candidate_ids(tokenizer) -> torch.Tensor:
    """Every vocabulary id except special tokens (pad, BOS, EOS, unk)."""
    special = set(tokenizer.all_special_ids)
    return torch.tensor([i for i in range(len(tokenizer)) if i not in special])


class LMClassifier:
    """A frozen causal LM read as a classifier: label scores at the last position of PROMPT TEXT SUFFIX."""

    def __init__(self, model, tokenizer, verbalizers: Mapping[str, str], suffix: str = ""):
        self.model, self.tok, self.suffix = model.eval(), tokenizer, suffix
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.labels = list(verbalizers)
        self.verb = torch.tensor(list(verbalizer_ids(tokenizer, verbalizers).values()))
        self.table = model.get_input_embeddings().weight.detach()
        import inspect

        # absolute positions (GPT-2) follow the left padding; ALiBi (BLOOM) reads the mask itself
        self.positions = getattr(model.config, "model_type", "") != "bloom" and \
            "position_ids" in inspect.signature(model.forward).parameters
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def _text_ids(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.tok.encode(" " + t.strip() + self.suffix, add_special_tokens=False) for t in texts]

    def logits(self, prompt: torch.Tensor | None, texts: Sequence[str]) -> torch.Tensor:
        """Verbalizer logits (b, labels) with prompt embeddings (n, d) before each text (None: no prompt).
        Sequences are left-padded, so the last position is every example's last token."""
        ids = self._text_ids(texts)
        n = 0 if prompt is None else prompt.shape[0]
        width = n + max(len(x) for x in ids)
        seq = torch.full((len(ids), width), self.pad, dtype=torch.long)
        mask = torch.zeros(len(ids), width, dtype=torch.long)
        for i, x in enumerate(ids):
            seq[i, width - len(x):] = torch.tensor(x)
            mask[i, width - len(x) - n:] = 1
        emb = self.table[seq].clone()
        if prompt is not None:
            starts = width - n - torch.tensor([len(x) for x in ids])
            rows = torch.arange(len(ids))[:, None]
            cols = starts[:, None] + torch.arange(n)[None]
            emb = emb.index_put((rows.expand(-1, n), cols), prompt.expand(len(ids), -1, -1).to(emb.dtype))
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        kwargs = {"position_ids": positions} if self.positions else {}
        out = self.model(inputs_embeds=emb, attention_mask=mask, **kwargs).logits[:, -1]  # (b, vocab)
        return out[:, self.verb]

    def prompt_nll(self, prompt: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood of prompt tokens 2..n given the ones before (the fluency loss)."""
        if len(ids) < 2:
            return prompt.sum() * 0
        logits = self.model(inputs_embeds=prompt[None]).logits[0, :-1]
        return F.cross_entropy(logits.float(), ids[1:])

    @torch.no_grad()
    def accuracy(self, prompt_ids: Sequence[int] | None, texts: Sequence[str], labels: Sequence[str],
                 batch_size: int = 64) -> float:
        """Share of ``texts`` whose highest verbalizer logit is their label's, with the hard prompt
        ``prompt_ids`` (None: no prompt)."""
        prompt = None if prompt_ids is None or len(prompt_ids) == 0 else self.table[torch.tensor(list(prompt_ids))]
        want = torch.tensor([self.labels.index(y) for y in labels])
        right = 0
        for i in range(0, len(texts), batch_size):
            right += int((self.logits(prompt, texts[i:i + batch_size]).argmax(dim=1) == want[i:i + batch_size]).sum())
        return right / max(1, len(texts))


def _check_data(texts, labels, known) -> None:
    if len(texts) != len(labels) or not texts:
        raise ValueError(f"need as many labels as texts, and at least one; got {len(texts)} texts, {len(labels)} labels")
    unknown = sorted({str(y) for y in labels} - set(known))
    if unknown:
        raise ValueError(f"labels without a verbalizer: {', '.join(unknown[:5])} (verbalizers for: {', '.join(known)})")


def learn_lm_prompt(model, tokenizer, texts: Sequence[str], labels: Sequence[str], verbalizers: Mapping[str, str],
                    config: LMPromptConfig | None = None) -> LMPromptResult:
    """Learn a hard prompt that makes ``model`` classify ``texts`` as ``labels`` through ``verbalizers``."""
    cfg = config or LMPromptConfig()
    clf = LMClassifier(model, tokenizer, verbalizers, cfg.suffix)
    labels = [str(y) for y in labels]
    _check_data(texts, labels, clf.labels)
    cands = candidate_ids(tokenizer)
    table_n = F.normalize(clf.table[cands].float(), dim=-1)
    gen = torch.Generator().manual_seed(cfg.seed)
    start = cands[torch.randint(len(cands), (cfg.prompt_len,), generator=gen)]
    P = clf.table[start].float().clone().requires_grad_(True)
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW([P], lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        from transformers.optimization import Adafactor

        opt = Adafactor([P], lr=cfg.lr, scale_parameter=False, relative_step=False, warmup_init=False)
    want = torch.tensor([clf.labels.index(y) for y in labels])
    order, rng = list(range(len(texts))), random.Random(cfg.seed)
    check = order[: min(len(order), 256)]  # the examples the kept prompt is chosen on
    best = (-math.inf, start.tolist(), -1)
    history, batch_pool = [], []
    for step in range(cfg.steps):
        if len(batch_pool) < cfg.batch_size:  # epochs of shuffled examples
            more = order[:]
            rng.shuffle(more)
            batch_pool += more
        batch, batch_pool = batch_pool[: cfg.batch_size], batch_pool[cfg.batch_size:]
        ids = cands[(F.normalize(P.detach(), dim=-1) @ table_n.T).argmax(dim=-1)]  # (n,) nearest tokens
        projected = clf.table[ids].float().requires_grad_(True)
        task = F.cross_entropy(clf.logits(projected, [texts[i] for i in batch]).float(), want[batch])
        nll = clf.prompt_nll(projected, ids) if cfg.fluency else torch.zeros(())
        loss = task + cfg.fluency * nll
        (grad,) = torch.autograd.grad(loss, projected)
        P.grad = grad.to(P.dtype)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % cfg.eval_every == 0 or step == cfg.steps - 1:
            acc = clf.accuracy(ids.tolist(), [texts[i] for i in check], [labels[i] for i in check])
            history.append({"step": step, "task_loss": round(float(task), 5), "fluency_nll": round(float(nll), 5),
                            "accuracy": round(acc, 4)})
            if acc > best[0]:
                best = (acc, ids.tolist(), step)
    acc, ids, step = best
    return LMPromptResult(tokenizer.decode(ids), ids, acc, step, history)
