"""Summarisers: turn a high-quality prompt into the short plain prompt a user would have typed.

A summariser is any object with ``summarise(prompts: list[str]) -> list[str]`` (one output per input;
an empty string means "no summary", and the pair is dropped). Two are built in:

- ``RuleSummariser``: no model. Drops weight syntax and style-modifier segments (quality.py), keeps the
  subject: the first content segment (``max_segments`` of them), cut to ``max_words`` words, with a
  trailing "by <artist>" removed.
- ``LLMSummariser``: any OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp server, Ollama, ...):
  ``POST {base_url}/chat/completions``. The paper used ChatGPT this way. The API key is read from an
  environment variable and is never logged, printed or stored in reprs.

The paper's third pair source goes the other way: ``LLMExpander`` (the same client with another
instruction) expands a low-quality prompt into a detailed high-quality one (``expand(prompts)``).
"""

from __future__ import annotations

import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit

from .quality import is_modifier, segments

log = logging.getLogger(__name__)


@runtime_checkable
class Summariser(Protocol):
    def summarise(self, prompts: list[str]) -> list[str]: ...


_TRAILING_ARTIST = re.compile(r"\s+(by|in the style of|art by|trending on)\s+.*$", re.I)


@dataclass
class RuleSummariser:
    max_words: int = 12  # keep at most this many words of content (DiffusionDB low prompts: ~7 words)
    max_segments: int = 1  # content segments kept (the first is the subject; later ones are details)

    def __post_init__(self):
        if self.max_words < 1 or self.max_segments < 1:
            raise ValueError(f"max_words and max_segments must be >= 1, got {self.max_words}, {self.max_segments}")

    def summarise(self, prompts: list[str]) -> list[str]:
        return [self.summarise_one(p) for p in prompts]

    def summarise_one(self, prompt: str) -> str:
        kept: list[str] = []
        words = 0
        for seg in segments(prompt):
            if is_modifier(seg):
                continue
            seg = _TRAILING_ARTIST.sub("", seg).strip()
            n = len(seg.split())
            if not seg or (kept and words + n > self.max_words):
                break
            kept.append(seg)
            words += n
            if words >= self.max_words or len(kept) >= self.max_segments:
                break
        text = ", ".join(kept)
        return " ".join(text.split()[: self.max_words])


SUMMARY_INSTRUCTION = (
    "You shorten prompts for text-to-image models. Rewrite the user's prompt as the short, plain "
    "description of its subject a casual user would type: at most {max_words} words, no style words, "
    "no artists, no quality tags, no weights or brackets. Answer with the description only."
)


EXPANSION_INSTRUCTION = (
    "You write prompts for text-to-image models. Expand the user's short prompt into one detailed, "
    "high-quality Stable Diffusion prompt: keep its subject, add the setting, lighting, style, medium and "
    "quality tags, as comma-separated phrases, in English, under 60 words. Answer with the prompt only."
)


class SummariserError(RuntimeError):
    """The LLM endpoint failed for one prompt after all retries."""


@dataclass
class LLMConfig:
    base_url: str = ""  # OpenAI-compatible base, e.g. http://127.0.0.1:8000/v1 (default: $OPENAI_BASE_URL)
    model: str = "gpt-4o-mini"  # model name the server expects
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the key (empty: send no key)
    timeout_s: float = 30.0  # per request (connect + read), > 0
    retries: int = 2  # extra attempts on timeouts, connection errors, 429 and 5xx (0 to ~5)
    backoff_s: float = 1.0  # wait before retry k: backoff_s * 2**k
    concurrency: int = 4  # requests in flight (1 to ~64; mind the server's rate limit)
    max_words: int = 12  # asked of the model in the instruction
    temperature: float = 0.0  # 0 for reproducible summaries
    max_tokens: int = 64  # cap on the answer
    on_error: str = "raise"  # "raise": stop at the first failed prompt; "skip": return "" for it
    instruction: str = field(default=SUMMARY_INSTRUCTION)  # system message ({max_words} is filled in)

    def __post_init__(self):
        self.base_url = (self.base_url or os.environ.get("OPENAI_BASE_URL", "")).rstrip("/")
        if not self.base_url:
            raise ValueError("LLM summariser: no base URL (give --llm-url or set OPENAI_BASE_URL)")
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"LLM summariser: base URL {self.base_url!r} is not an http(s) URL")
        if parts.path in ("", "/"):  # "http://host:8000" means the usual /v1 root
            self.base_url += "/v1"
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if not 0 <= self.retries <= 10:
            raise ValueError(f"retries must be in [0, 10], got {self.retries}")
        if not 1 <= self.concurrency <= 256:
            raise ValueError(f"concurrency must be in [1, 256], got {self.concurrency}")
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {self.on_error!r}")


class LLMSummariser:
    """Summaries from an OpenAI-compatible ``/chat/completions`` endpoint, ``concurrency`` at a time."""

    def __init__(self, config: LLMConfig):
        import httpx

        self.config = config
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(base_url=config.base_url, headers=headers, timeout=config.timeout_s)
        self.failures = 0  # prompts that failed after retries (with on_error="skip")

    def __repr__(self) -> str:  # never shows the key
        return f"LLMSummariser(base_url={self.config.base_url!r}, model={self.config.model!r})"

    def close(self) -> None:
        self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def summarise(self, prompts: list[str]) -> list[str]:
        if self.config.concurrency == 1 or len(prompts) <= 1:
            return [self._one(p) for p in prompts]
        with ThreadPoolExecutor(self.config.concurrency) as pool:
            return list(pool.map(self._one, prompts))

    def _one(self, prompt: str) -> str:
        try:
            return self.request(prompt)
        except SummariserError:
            if self.config.on_error == "raise":
                raise
            self.failures += 1
            log.warning("LLM summary failed for one prompt; skipped", exc_info=True)
            return ""

    def request(self, prompt: str) -> str:
        """One chat completion with retries; the answer's text, stripped of whitespace and quotes."""
        import httpx

        cfg = self.config
        body = {
            "model": cfg.model,
            "messages": [
                {"role": "system", "content": cfg.instruction.format(max_words=cfg.max_words)},
                {"role": "user", "content": prompt},
            ],
            "temperature": cfg.temperature,
            "max_tokens": cfg.max_tokens,
        }
        last = ""
        for attempt in range(cfg.retries + 1):
            if attempt:
                time.sleep(cfg.backoff_s * 2 ** (attempt - 1))
            try:
                resp = self._client.post("/chat/completions", json=body)
            except httpx.TimeoutException:
                last = f"timed out after {cfg.timeout_s} s"
                continue
            except httpx.TransportError as e:
                last = f"connection failed ({type(e).__name__})"
                continue
            if resp.status_code == 429 or resp.status_code >= 500:
                last = f"HTTP {resp.status_code}"
                continue
            if resp.status_code != 200:
                raise SummariserError(f"{cfg.base_url}/chat/completions: HTTP {resp.status_code}: "
                                      f"{resp.text[:200]}")
            try:
                text = resp.json()["choices"][0]["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError) as e:
                raise SummariserError(f"{cfg.base_url}/chat/completions: not a chat completion: "
                                      f"{resp.text[:200]!r}") from e
            return (text or "").strip().strip("\"'").strip()
        raise SummariserError(f"{cfg.base_url}/chat/completions: {last} ({cfg.retries + 1} attempts)")


def make_summariser(kind: str, **llm_kwargs) -> Summariser:
    """'rule' or 'llm' (with LLMConfig fields as keywords)."""
    if kind == "rule":
        return RuleSummariser(**{k: v for k, v in llm_kwargs.items() if k == "max_words"})
    if kind == "llm":
        return LLMSummariser(LLMConfig(**llm_kwargs))
    raise ValueError(f"unknown summariser {kind!r}; valid: rule, llm")


class LLMExpander(LLMSummariser):
    """Expansions from an OpenAI-compatible endpoint: low-quality prompt -> high-quality prompt.

    The client, retries, concurrency and error policy are the summariser's; only the instruction and
    the answer budget differ (``expander_config``)."""

    def __repr__(self) -> str:  # never shows the key
        return f"LLMExpander(base_url={self.config.base_url!r}, model={self.config.model!r})"

    def expand(self, prompts: list[str]) -> list[str]:
        """One expansion per prompt, in order ("" for a prompt that failed with on_error="skip")."""
        return self.summarise(prompts)


def expander_config(**llm_kwargs) -> LLMConfig:
    """An LLMConfig for expansions: the expansion instruction and a 256-token answer unless given."""
    llm_kwargs.setdefault("instruction", EXPANSION_INSTRUCTION)
    llm_kwargs.setdefault("max_tokens", 256)
    return LLMConfig(**llm_kwargs)
