"""Cleaning of prompt pairs: length bounds, non-English and NSFW filters, score floors, deduplication.

Each check returns the reason a row is rejected (a short string) or None, so the pair builder can keep
a rejects table with one reason per dropped row.

- Non-English: a cheap script test, not a language model. A text is rejected when fewer than
  ``min_ascii_letter_share`` of its letters are ASCII (catches Chinese, Japanese, Cyrillic, Arabic, ...)
  or when at least ``max_foreign_word_share`` of its words are frequent function words of other Latin-
  script languages (``FOREIGN_FUNCTION_WORDS``: Spanish, French, German, Portuguese, Italian, Dutch).
- NSFW: whole-word, case-insensitive match against ``NSFW_WORDS`` plus the user's own list (a file of
  one word or phrase per line). Word lists miss paraphrases; the paper also filtered by image checks.
- Dedupe: on the pair after lower-casing, removing weight syntax and collapsing spaces and punctuation.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from .quality import strip_weights

NSFW_WORDS = frozenset({
    "nsfw", "nude", "nudes", "nudity", "naked", "topless", "bottomless", "porn", "porno", "pornographic",
    "sex", "sexy", "sexual", "erotic", "erotica", "hentai", "lewd", "fetish", "bdsm", "lingerie",
    "nipple", "nipples", "genitals", "penis", "vagina", "boobs", "breasts", "busty", "cleavage",
    "orgasm", "stripper", "playboy", "onlyfans", "xxx", "gore", "gory", "decapitated", "dismembered",
    "mutilated", "corpse", "bloody corpse", "suicide", "rape",
})

FOREIGN_FUNCTION_WORDS = frozenset({
    # Spanish / Portuguese / Italian
    "el", "los", "las", "del", "una", "uno", "y", "con", "por", "para", "que", "muy", "uma", "com",
    "não", "il", "della", "delle", "di", "che", "gli", "sono",
    # French
    "le", "les", "des", "du", "une", "et", "avec", "dans", "sur", "est", "au", "aux",
    # German / Dutch (words that are also English, such as die, van, met, are left out)
    "der", "das", "und", "mit", "ein", "eine", "einem", "einer", "ist", "auf", "het", "een", "en",
})

_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?", re.UNICODE)
_NORMALISE = re.compile(r"[\s\W_]+", re.UNICODE)


def normalise(text: str) -> str:
    """Key for deduplication: lower case, no weight syntax, punctuation and spaces collapsed."""
    return _NORMALISE.sub(" ", strip_weights(text).lower()).strip()


def non_english_reason(text: str, min_ascii_letter_share: float = 0.9, max_foreign_word_share: float = 0.25):
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return "no letters"
    ascii_share = sum(c.isascii() for c in letters) / len(letters)
    if ascii_share < min_ascii_letter_share:
        scripts = sorted({unicodedata.name(c, "?").split()[0] for c in letters if not c.isascii()})[:3]
        return f"non-English: {1 - ascii_share:.0%} non-ASCII letters ({', '.join(scripts)})"
    words = [w.lower() for w in _WORD.findall(text)]
    foreign = sum(w in FOREIGN_FUNCTION_WORDS for w in words)
    if len(words) >= 4 and foreign / len(words) >= max_foreign_word_share:
        return f"non-English: {foreign} of {len(words)} words are non-English function words"
    return None


def load_word_list(path: str | Path) -> frozenset[str]:
    """Words or phrases, one per line; blank lines and lines starting with # are ignored."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ValueError(f"word list {path}: {e.strerror or e}") from e
    return frozenset(w.strip().lower() for w in lines if w.strip() and not w.lstrip().startswith("#"))


class WordFilter:
    """Whole-word / whole-phrase matcher (case-insensitive) over a word list."""

    def __init__(self, words):
        words = sorted({w.strip().lower() for w in words if w.strip()}, key=len, reverse=True)
        self.pattern = (re.compile(r"(?<!\w)(" + "|".join(re.escape(w) for w in words) + r")(?!\w)", re.I)
                        if words else None)

    def find(self, text: str) -> str | None:
        m = self.pattern.search(text) if self.pattern else None
        return m.group(1).lower() if m else None


@dataclass
class CleanConfig:
    min_raw_chars: int = 3  # shortest low-quality prompt kept
    max_raw_chars: int = 150  # longest low-quality prompt kept (it should be short)
    min_prompt_chars: int = 20  # shortest high-quality prompt kept
    max_prompt_chars: int = 1000  # longest high-quality prompt kept (SFT max length: 384 tokens)
    english_only: bool = True  # drop rows whose raw or prompt text is not English (see module docstring)
    min_ascii_letter_share: float = 0.9  # non-English test: share of letters that must be ASCII
    max_foreign_word_share: float = 0.25  # non-English test: share of foreign function words that rejects
    nsfw_filter: bool = True  # drop rows matching NSFW_WORDS + extra_blocklist
    extra_blocklist: frozenset[str] = field(default_factory=frozenset)  # user words / phrases to block
    min_pick_score: float | None = None  # drop rows with a lower pick_score (paper's SFT loader: 18.5)
    min_aesthetic_score: float | None = None  # drop rows with a lower aesthetic_score
    dedupe: bool = True  # keep the first of pairs that are equal after normalise()

    def __post_init__(self):
        if not 0 <= self.min_raw_chars <= self.max_raw_chars:
            raise ValueError(f"need 0 <= min_raw_chars <= max_raw_chars, got {self.min_raw_chars}, "
                             f"{self.max_raw_chars}")
        if not 0 <= self.min_prompt_chars <= self.max_prompt_chars:
            raise ValueError(f"need 0 <= min_prompt_chars <= max_prompt_chars, got {self.min_prompt_chars}, "
                             f"{self.max_prompt_chars}")
        if not 0 < self.min_ascii_letter_share <= 1 or not 0 < self.max_foreign_word_share <= 1:
            raise ValueError("min_ascii_letter_share and max_foreign_word_share must be in (0, 1]")
        self.extra_blocklist = frozenset(w.lower() for w in self.extra_blocklist)


class PairCleaner:
    """``reason(raw, prompt, scores)`` -> why a pair is dropped, or None; ``seen`` tracks duplicates."""

    def __init__(self, cfg: CleanConfig | None = None):
        self.cfg = cfg or CleanConfig()
        self.words = WordFilter(NSFW_WORDS | self.cfg.extra_blocklist) if self.cfg.nsfw_filter else None
        self.seen: set[tuple[str, str]] = set()

    def reason(self, raw: str, prompt: str, pick_score=None, aesthetic_score=None) -> str | None:
        cfg = self.cfg
        if not isinstance(raw, str) or not isinstance(prompt, str):
            return "missing text"
        raw, prompt = raw.strip(), prompt.strip()
        if not cfg.min_raw_chars <= len(raw) <= cfg.max_raw_chars:
            return f"raw_prompt length {len(raw)} outside [{cfg.min_raw_chars}, {cfg.max_raw_chars}]"
        if not cfg.min_prompt_chars <= len(prompt) <= cfg.max_prompt_chars:
            return f"prompt length {len(prompt)} outside [{cfg.min_prompt_chars}, {cfg.max_prompt_chars}]"
        if len(raw) >= len(prompt):
            return "raw_prompt is not shorter than prompt"
        if normalise(raw) == normalise(prompt):
            return "raw_prompt equals prompt"
        if cfg.english_only:
            for name, text in (("raw_prompt", raw), ("prompt", prompt)):
                why = non_english_reason(text, cfg.min_ascii_letter_share, cfg.max_foreign_word_share)
                if why:
                    return f"{name} {why}"
        if self.words is not None:
            for name, text in (("raw_prompt", raw), ("prompt", prompt)):
                hit = self.words.find(text)
                if hit:
                    return f"{name} NSFW word {hit!r}"
        if cfg.min_pick_score is not None and _below(pick_score, cfg.min_pick_score):
            return f"pick_score {pick_score} < {cfg.min_pick_score}"
        if cfg.min_aesthetic_score is not None and _below(aesthetic_score, cfg.min_aesthetic_score):
            return f"aesthetic_score {aesthetic_score} < {cfg.min_aesthetic_score}"
        if cfg.dedupe:
            key = (normalise(raw), normalise(prompt))
            if key in self.seen:
                return "duplicate pair"
            self.seen.add(key)
        return None


def _below(value, floor: float) -> bool:
    """Missing scores (None / NaN) count as below a floor: a row cannot prove it passes."""
    try:
        return not float(value) >= floor
    except (TypeError, ValueError):
        return True
