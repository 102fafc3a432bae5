"""Rewrite plain prompts into Stable Diffusion prompts with a causal LM (BeautifulPrompt inference).

    rw = Rewriter.from_pretrained("alibaba-pai/pai-bloom-1b1-text2prompt-sd")   # or a local folder
    rw.rewrite(["a cat in the rain", "a castle"], mode="beam", num_beams=4)

Prompts are formatted with an instruction template (templates.py), sorted by token length, and
generated in left-padded batches with the KV cache: the attention mask hides the padding and
``generate`` derives position ids from it, so a batched prompt yields the same greedy text as the prompt
alone (tests/test_rewriter.py checks both BLOOM and GPT-2). Only the generated ids are decoded,
with ``skip_special_tokens``, and the text is stripped of surrounding whitespace and nothing else:
the public code's ``strip('</s>')`` strips the *characters* '<', '/', 's', '>' and so ate a trailing "s".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch

from .templates import DEFAULT_TEMPLATE, MAX_RAW_CHARS, check_raw_prompt, format_prompt, get_template
from .tokenizer import ensure_pad_token

log = logging.getLogger(__name__)

# The published BeautifulPrompt model (BLOOM 1.1B fine-tuned with SFT + PPO), used with template v1.
DEFAULT_MODEL_ID = "alibaba-pai/pai-bloom-1b1-text2prompt-sd"
MODES = ("greedy", "sample", "beam")
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


class PromptError(ValueError):
    """An input prompt that cannot be rewritten; ``index`` is its position in the list given."""

    def __init__(self, index: int, reason: str):
        super().__init__(f"prompts[{index}]: {reason}")
        self.index = index
        self.reason = reason


@dataclass
class GenerationConfig:
    max_new_tokens: int = 256  # cap on generated tokens (paper's PPO: 256; real prompts end with EOS near 50)
    min_new_tokens: int = 0  # suppress EOS until this many tokens (benchmarks: = max_new_tokens)
    mode: str = "greedy"  # greedy (deterministic), sample (top-k / top-p), beam (num_beams beams)
    temperature: float = 1.0  # sample: softmax temperature, > 0 (1.0 = the model's distribution)
    top_p: float = 1.0  # sample: nucleus mass in (0, 1] (paper's PPO rollouts: 1.0)
    top_k: int = 0  # sample: keep the k best tokens, 0 = off (paper's PPO rollouts: 0)
    num_beams: int = 4  # beam: beams per prompt, >= 2 (Promptist uses 8)
    repetition_penalty: float = 1.0  # > 0; the model card's example uses 1.2 with sampling
    seed: int | None = None  # sample: seed of the generator (outputs also depend on batch composition)
    batch_size: int = 16  # prompts per generate call (memory grows with batch * beams * length)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} is unknown; valid modes: {', '.join(MODES)}")
        if not (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1):
            raise ValueError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"min_new_tokens must be in [0, max_new_tokens={self.max_new_tokens}], "
                             f"got {self.min_new_tokens!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise ValueError(f"top_k must be an integer >= 0, got {self.top_k!r}")
        if self.mode == "beam" and not (isinstance(self.num_beams, int) and self.num_beams >= 2):
            raise ValueError(f"num_beams must be an integer >= 2 for beam search, got {self.num_beams!r}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty!r}")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")

    def hf_kwargs(self) -> dict:
        """Keyword arguments of ``model.generate`` for this mode (only the ones the mode uses)."""
        kw = dict(max_new_tokens=self.max_new_tokens, use_cache=True, num_return_sequences=1,
                  repetition_penalty=self.repetition_penalty)
        if self.min_new_tokens:
            kw["min_new_tokens"] = self.min_new_tokens
        if self.mode == "greedy":
            kw.update(do_sample=False, num_beams=1)
        elif self.mode == "sample":
            kw.update(do_sample=True, num_beams=1, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        else:
            kw.update(do_sample=False, num_beams=self.num_beams, early_stopping=True)
        return kw


@dataclass(frozen=True)
class Rewrite:
    raw_prompt: str  # the input, unchanged
    text: str  # the rewritten prompt: decoded new tokens, surrounding whitespace stripped
    prompt_tokens: int  # tokens of the templated input (no padding)
    new_tokens: int  # generated tokens up to and including the first EOS (no padding after it)


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype, device: torch.device):
    """None: float32 on CPU, the checkpoint's dtype ("auto") on GPU; or a name / torch.dtype."""
    if dtype is None:
        return torch.float32 if device.type == "cpu" else "auto"
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; valid: auto, {', '.join(sorted(_DTYPES))}") from None


def training_output_model(name: str) -> str:
    """The model folder inside a ``promptmine train`` output folder: ``best/`` (PPO's highest held-out
    reward) if present, else ``model/`` (the final one); any other name or folder is returned as it is."""
    local = Path(name).expanduser()
    if local.is_dir() and not (local / "config.json").is_file():
        for sub in ("best", "model"):
            if (local / sub / "config.json").is_file():
                log.info("%s is a training output: loading its %s/ model", name, sub)
                return str(local / sub)
    return name


class Rewriter:
    """A causal LM + tokenizer + instruction template; ``rewrite`` maps raw prompts to rewritten ones."""

    def __init__(self, model, tokenizer, template: str = DEFAULT_TEMPLATE, *, max_input_chars: int = MAX_RAW_CHARS):
        get_template(template)  # fail early on an unknown name
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.template = template
        self.max_input_chars = max_input_chars
        ensure_pad_token(tokenizer)
        tokenizer.padding_side = "left"  # a decoder-only model continues from the last position
        self.eos_token_id = tokenizer.eos_token_id
        if self.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token: generation could never stop")

    @classmethod
    def from_pretrained(cls, name_or_path: str = DEFAULT_MODEL_ID, template: str = DEFAULT_TEMPLATE,
                        device=None, dtype=None, **kwargs) -> "Rewriter":
        """Load a causal LM and its tokenizer by Hugging Face id, local folder, or the output folder of
        ``promptmine train`` (its ``best/`` model when there is one, else ``model/``)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        get_template(template)
        device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, device)
        name = training_output_model(str(name_or_path))
        local = Path(name).expanduser()
        if (name.startswith((".", "/", "~")) or local.exists()) and not (local / "config.json").is_file():
            raise FileNotFoundError(f"model folder {name!r}: no config.json there (not a saved causal LM)")
        try:
            tokenizer = AutoTokenizer.from_pretrained(name)
            model = AutoModelForCausalLM.from_pretrained(name, dtype=torch_dtype)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot load causal LM {name!r} (a Hugging Face id, or a folder saved with "
                             f"save_pretrained; offline runs need it cached): {e}") from e
        log.info("loaded %s (%s) on %s", name, type(model).__name__, device)
        return cls(model.to(device), tokenizer, template, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def max_positions(self) -> int | None:
        """Positions the model can attend to, when it has a fixed table (GPT-2); None for ALiBi (BLOOM)."""
        cfg = self.model.config
        for key in ("n_positions", "max_position_embeddings"):
            value = getattr(cfg, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Token counts of ``texts`` under this tokenizer (no special tokens added), for tokens/s."""
        return [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def context_lengths(self, texts: list[str]) -> list[int]:
        """Tokens the model is given for each templated text: encoded as in SFT (sft.context_ids), i.e.
        with the tokenizer's own special tokens (none for BLOOM / GPT-2, a BOS for Llama-style ones)."""
        return [len(ids) for ids in self.tokenizer(list(texts))["input_ids"]]

    def problems(self, prompts: list[str], max_new_tokens: int) -> list[str | None]:
        """Per prompt, why it cannot be rewritten (empty, too long, over the model's positions) or None.

        For batch jobs that turn bad rows into rejects instead of failing: rewrite the rows with None.
        """
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, not one string")
        reasons = [check_raw_prompt(raw, self.max_input_chars) for raw in prompts]
        limit = self.max_positions()
        if limit is not None:
            ok = [i for i, r in enumerate(reasons) if r is None]
            texts = [format_prompt(prompts[i], self.template, max_chars=self.max_input_chars) for i in ok]
            for i, n in zip(ok, self.context_lengths(texts)):
                if n + max_new_tokens > limit:
                    reasons[i] = (f"templated prompt has {n} tokens; with max_new_tokens={max_new_tokens} "
                                  f"it exceeds the model's {limit} positions")
        return reasons

    def format_all(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        """Templated inputs; a PromptError names the first bad prompt by index and says why."""
        for i, reason in enumerate(self.problems(prompts, max_new_tokens)):
            if reason:
                raise PromptError(i, reason)
        return [format_prompt(raw, self.template, max_chars=self.max_input_chars) for raw in prompts]

    def rewrite(self, prompts: list[str], config: GenerationConfig | None = None, **overrides) -> list[str]:
        """Rewritten prompts, one per input, in input order. Keyword overrides: GenerationConfig fields."""
        return [r.text for r in self.rewrite_detailed(prompts, config, **overrides)]

    def rewrite_detailed(self, prompts: list[str], config: GenerationConfig | None = None,
                         **overrides) -> list[Rewrite]:
        """As ``rewrite``, with token counts per prompt (for tokens/s accounting)."""
        cfg = _merge(config, overrides)
        texts = self.format_all(prompts, cfg.max_new_tokens)
        lengths = self.context_lengths(texts)
        # Longest first: batches of similar length waste less compute on padding; the order is restored.
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        results: list[Rewrite | None] = [None] * len(texts)
        with torch.random.fork_rng(devices=[] if self.device.type == "cpu" else [self.device]):
            if cfg.seed is not None:
                torch.manual_seed(cfg.seed)
            for start in range(0, len(order), cfg.batch_size):
                chunk = order[start:start + cfg.batch_size]
                for i, (text, n_new) in zip(chunk, self._generate([texts[i] for i in chunk], cfg)):
                    results[i] = Rewrite(prompts[i], text, lengths[i], n_new)
        return results

    @torch.inference_mode()
    def _generate(self, texts: list[str], cfg: GenerationConfig) -> list[tuple[str, int]]:
        enc = self.tokenizer(texts, return_tensors="pt", padding=True)  # special tokens as in SFT
        enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        out = self.model.generate(**enc, **cfg.hf_kwargs(), pad_token_id=self.tokenizer.pad_token_id,
                                  eos_token_id=self.eos_token_id)
        new = out[:, enc["input_ids"].shape[1]:]  # with left padding every row's completion starts here
        return [(self.decode(row), self.count_new(row)) for row in new.tolist()]

    def count_new(self, ids: list[int]) -> int:
        """Generated tokens up to and including the first EOS (what follows it is padding)."""
        return ids.index(self.eos_token_id) + 1 if self.eos_token_id in ids else len(ids)

    def decode(self, ids: list[int]) -> str:
        """The text of generated ids up to the first EOS: special tokens skipped, whitespace stripped."""
        ids = ids[: self.count_new(ids)]
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False).strip()


def _merge(config: GenerationConfig | None, overrides: dict) -> GenerationConfig:
    config = config or GenerationConfig()
    unknown = sorted(set(overrides) - {f.name for f in fields(GenerationConfig)})
    if unknown:
        raise TypeError(f"unknown generation option(s) {unknown}; valid: "
                        f"{', '.join(f.name for f in fields(GenerationConfig))}")
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})
