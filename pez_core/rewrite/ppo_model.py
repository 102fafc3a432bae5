"""The PPO policy: a causal LM with trlx's value head, and trlx's ``num_layers_unfrozen``.

Freezing follows trlx's ``freeze_bottom_causal_layers``: the token (and position) embeddings and every
transformer block but the top ``num_layers_unfrozen`` stop receiving gradients (-1: everything trains).
BLOOM ties its output head to the input embeddings, so the head is frozen with them, as in trlx. The
reference model stays a full frozen copy (trlx's hydra head shares the frozen trunk instead; see
docs/training.md for the memory arithmetic).

Shapes: b rollouts, t tokens, v vocabulary.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

VALUE_HEAD_FILE = "value_head.pt"


class PolicyWithValueHead(nn.Module):
    """A causal LM plus trlx's value head (hidden -> 2*hidden -> 1 MLP) on the last hidden state."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        h = lm.config.hidden_size
        self.v_head = nn.Sequential(nn.Linear(h, 2 * h), nn.ReLU(), nn.Linear(2 * h, 1))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "PolicyWithValueHead":
        """Load the LM (e.g. the SFT model) and, if saved beside it, the value head."""
        from transformers import AutoModelForCausalLM

        model = cls(AutoModelForCausalLM.from_pretrained(path))
        head = Path(path) / VALUE_HEAD_FILE
        if head.is_file():
            model.v_head.load_state_dict(torch.load(head, map_location="cpu", weights_only=True))
        return model

    def save_pretrained(self, folder: str | Path) -> None:
        """The LM in Hugging Face format (loadable by AutoModelForCausalLM) plus value_head.pt."""
        self.lm.save_pretrained(folder)
        torch.save(self.v_head.state_dict(), Path(folder) / VALUE_HEAD_FILE)

    def forward(self, input_ids, attention_mask):
        """(logits (b, t, v), values (b, t)) for left-padded sequences."""
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                      **position_kwargs(self.lm, attention_mask))
        return out.logits, self.v_head(out.hidden_states[-1]).squeeze(-1)


def position_kwargs(lm: nn.Module, attention_mask: torch.Tensor) -> dict:
    """Position ids that skip left padding, for models with absolute positions (BLOOM's ALiBi needs none)."""
    if getattr(lm.config, "model_type", "") == "bloom":
        return {}
    return {"position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0)}


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel (generation and saving go through it)."""
    return model.module if hasattr(model, "module") else model


def transformer_blocks(lm: nn.Module) -> nn.ModuleList:
    """The list of transformer blocks of a causal LM (BLOOM/GPT-2 ``transformer.h``, Llama ``model.layers``)."""
    n = getattr(lm.config, "num_hidden_layers", None) or getattr(lm.config, "n_layer", None)
    for module in lm.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"{type(lm).__name__}: no list of {n} transformer blocks found")


def freeze_lower_layers(lm: nn.Module, num_layers_unfrozen: int) -> int:
    """Freeze embeddings and all blocks below the top ``num_layers_unfrozen`` (-1: freeze nothing).

    Returns the number of parameters left trainable. Parameters outside the blocks (the final norm, an
    untied output head) stay trainable unless they are embeddings.
    """
    if num_layers_unfrozen < 0:
        return sum(p.numel() for p in lm.parameters() if p.requires_grad)
    blocks = transformer_blocks(lm)
    frozen_blocks = blocks[:max(len(blocks) - num_layers_unfrozen, 0)]
    frozen = {id(p) for p in frozen_blocks.parameters()}
    frozen |= {id(p) for p in lm.get_input_embeddings().parameters()}
    in_blocks = {id(p) for p in blocks.parameters()}
    for name, p in lm.named_parameters():
        if id(p) in frozen or (id(p) not in in_blocks and any(k in name for k in ("embed", "wte", "wpe"))):
            p.requires_grad_(False)
    return sum(p.numel() for p in lm.parameters() if p.requires_grad)
