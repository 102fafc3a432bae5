"""Tiny causal LMs of the real architectures, built offline, for tests and benchmarks.

``build_tiny_lm(folder)`` trains a byte-level BPE tokenizer (the ``tokenizers`` library, about 0.01 s)
on a built-in corpus of prompt-like strings and the template words, and saves a randomly initialised
``BloomForCausalLM`` (or ``GPT2LMHeadModel``) beside it, so that ``AutoTokenizer.from_pretrained(folder)``
and ``AutoModelForCausalLM.from_pretrained(folder)`` load it exactly as real weights are loaded.
The weights are random: the model's text means nothing, but every code path (padding, caching,
generation, losses) is the real one.
"""

from __future__ import annotations

import itertools
import logging
import random
from pathlib import Path

from .templates import TEMPLATES

log = logging.getLogger(__name__)

# Special tokens in the order of their ids (as BLOOM: <unk>=0, <s>=1, </s>=2, <pad>=3).
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")
ARCHITECTURES = ("bloom", "gpt2")

_SUBJECTS = (
    "a cat", "a dog", "a castle", "a girl", "an old man", "a robot", "a dragon", "a forest", "a city",
    "a lighthouse", "a mountain lake", "a spaceship", "a portrait of a woman", "a fox", "a sailing ship",
    "a samurai", "a cottage", "a waterfall", "an astronaut", "a tiger", "a flower garden", "a knight",
)
_PLACES = (
    "in the rain", "at sunset", "on the moon", "under the sea", "in a misty forest", "in space",
    "on a hill", "in the desert", "at night", "in a cyberpunk city", "by the river", "in winter",
)
_STYLES = (
    "highly detailed", "digital painting", "artstation", "concept art", "sharp focus", "illustration",
    "8k", "octane render", "unreal engine", "trending on artstation", "cinematic lighting",
    "by greg rutkowski", "by alphonse mucha", "matte painting", "oil on canvas", "volumetric light",
    "intricate", "elegant", "smooth", "4k", "masterpiece", "best quality", "photorealistic",
)


def tiny_corpus(size: int = 400, seed: int = 0) -> list[str]:
    """Prompt-like strings (short raw ones, long styled ones with weights) plus the templates' text."""
    rng = random.Random(seed)
    pairs = list(itertools.product(_SUBJECTS, _PLACES))
    rng.shuffle(pairs)
    corpus = [t.text.format(raw_prompt="") for t in TEMPLATES.values()]
    for subject, place in itertools.islice(itertools.cycle(pairs), size):
        styles = rng.sample(_STYLES, rng.randint(2, 6))
        if rng.random() < 0.3:
            styles[0] = f"({styles[0]}:{rng.choice((1.1, 1.2, 1.3, 1.5))})"
        if rng.random() < 0.2:
            styles[-1] = f"[{styles[-1]}]"
        corpus.append(f"{subject} {place}")
        corpus.append(", ".join([f"{subject} {place}", *styles]))
    return corpus


def train_tiny_tokenizer(vocab_size: int = 512, seed: int = 0, corpus: list[str] | None = None):
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on ``corpus`` (default ``tiny_corpus``; no network).
    The templates' text is always added, so the instruction tokenises compactly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodes: no <unk> in practice
        show_progress=False,
    )
    text = tiny_corpus(seed=seed) if corpus is None else \
        [t.text.format(raw_prompt="") for t in TEMPLATES.values()] + list(corpus)
    tok.train_from_iterator(text, trainer=trainer)
    return tok


def build_tiny_lm(
    folder,
    arch: str = "bloom",
    seed: int = 0,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    vocab_size: int = 512,
    max_positions: int = 1024,
    init_std: float = 0.02,
    corpus: list[str] | None = None,
) -> Path:
    """Save a tiny random ``arch`` model and its tokenizer to ``folder``; returns the folder.

    arch: "bloom" (BloomForCausalLM, the paper's architecture) or "gpt2" (GPT2LMHeadModel).
    vocab_size: BPE vocabulary (>= 256 byte tokens + 4 specials; a few hundred is plenty).
    max_positions: GPT-2's position table size (BLOOM uses ALiBi and has none).
    corpus: the tokenizer's training text (default: the built-in prompt-like corpus; the world loop passes
        ``pez_core.world.prompts.world_corpus()``).
    init_std: std of the random weights (transformers' default 0.02 gives near-uniform next-token
        distributions, so greedy text barely depends on the prompt; 0.3 to 1.0 makes it prompt-dependent).
    """
    import torch
    from transformers import (
        BloomConfig,
        BloomForCausalLM,
        GenerationConfig,
        GPT2Config,
        GPT2LMHeadModel,
        PreTrainedTokenizerFast,
    )

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; valid: {', '.join(ARCHITECTURES)}")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size {vocab_size} is below the 256 byte tokens + {len(SPECIAL_TOKENS)} specials")

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_tiny_tokenizer(vocab_size, seed, corpus),
        unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        padding_side="left",  # decoder-only generation pads on the left
        model_max_length=max_positions,
    )
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in
           (("bos", "<s>"), ("eos", "</s>"), ("pad", "<pad>"))}
    common = dict(vocab_size=len(tokenizer), bos_token_id=ids["bos"], eos_token_id=ids["eos"],
                  pad_token_id=ids["pad"])
    arch_kw = dict(initializer_range=init_std)
    if arch == "bloom":
        config = BloomConfig(hidden_size=hidden_size, n_layer=num_layers, n_head=num_heads, **arch_kw, **common)
        model_cls = BloomForCausalLM
    else:
        config = GPT2Config(n_embd=hidden_size, n_layer=num_layers, n_head=num_heads,
                            n_positions=max_positions, **arch_kw, **common)
        model_cls = GPT2LMHeadModel
    with torch.random.fork_rng(devices=[]):  # do not disturb the caller's global RNG
        torch.manual_seed(seed)
        model = model_cls(config).eval()
    model.config.initializer_range = 0.02  # saved config: what later from_config / new heads should use
    model.generation_config = GenerationConfig(**common)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    log.debug("saved tiny %s (%d parameters, vocab %d) to %s",
              arch, sum(p.numel() for p in model.parameters()), len(tokenizer), folder)
    return folder
