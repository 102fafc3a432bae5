"""Heuristics that split prompts into low and high quality, as BeautifulPrompt does on DiffusionDB.

The paper splits DiffusionDB prompts "by length and by certain tags"; it does not publish the rules.
Ours, each a field of QualityConfig:

- A prompt is split on commas into segments. A segment is a *style modifier* when, once weight syntax
  is removed, it is a known modifier phrase (``MODIFIER_PHRASES``: quality, platform, render, lighting,
  medium, camera words), names an artist or style (``by ...``, ``art by ...``, ``in the style of ...``,
  ``trending on ...``), or is a resolution (``8k``, ``4k``, ``1080p``).
- *Weight syntax* is counted: ``(word:1.3)`` (AUTOMATIC1111), ``((word))`` nested emphasis,
  ``[word]`` de-emphasis, ``{word}`` (NovelAI) and ``::1.5`` (Midjourney).
- high: at least ``high_min_chars`` characters and at least ``high_min_signals`` modifiers + weights.
- low: at most ``low_max_chars`` characters, no modifier, no weight, at most ``low_max_commas`` commas.
- everything else is "mid" and is not used (neither clearly plain nor clearly engineered).

DiffusionDB's averages (paper: 40 characters for low, 198 for high) fall well inside these bounds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MODIFIER_PHRASES = frozenset({
    # quality
    "highly detailed", "ultra detailed", "extremely detailed", "very detailed", "detailed", "intricate",
    "intricate details", "intricate detail", "masterpiece", "best quality", "high quality", "sharp focus",
    "hyperrealistic", "hyper realistic", "photorealistic", "photo realistic", "realistic", "hyperdetailed",
    "hd", "uhd", "hdr", "high resolution", "highres", "award winning", "award - winning", "award-winning",
    "stunning", "beautiful", "epic", "elegant", "smooth", "ornate", "insanely detailed",
    # platforms
    "artstation", "trending on artstation", "cgsociety", "deviantart", "pixiv", "behance", "unsplash",
    "featured on artstation", "artstation hq", "pinterest",
    # render engines
    "octane render", "octane", "unreal engine", "unreal engine 5", "unreal engine 4", "vray", "v-ray",
    "ray tracing", "raytracing", "cinema 4d", "3d render", "blender", "redshift", "cryengine", "zbrush",
    # lighting
    "cinematic lighting", "volumetric lighting", "volumetric light", "dramatic lighting", "studio lighting",
    "soft lighting", "golden hour", "rim light", "rim lighting", "god rays", "global illumination",
    "cinematic", "dramatic", "moody", "atmospheric", "backlit", "ambient occlusion", "bloom",
    # medium
    "digital painting", "digital art", "concept art", "matte painting", "oil painting", "oil on canvas",
    "illustration", "watercolor", "watercolour", "sketch", "anime", "manga", "comic", "pixel art",
    "vector art", "character design", "key visual", "splash art", "fantasy", "sci-fi", "cyberpunk",
    "steampunk", "surreal", "surrealism", "art nouveau", "baroque", "impressionism", "vaporwave",
    # camera
    "35mm", "50mm", "85mm", "bokeh", "depth of field", "wide angle", "dslr", "macro", "close up",
    "close-up", "portrait photography", "film grain", "kodak portra", "f/1.8", "f 1.8", "long exposure",
})

# Segment prefixes that mark an artist, a style or a platform.
_MODIFIER_PREFIX = re.compile(
    r"^(by|art by|artwork by|painted by|drawn by|in the style of|style of|inspired by|trending on|featured on|"
    r"made in|rendered in|rendered with|shot on|photo by|photograph by)\b", re.I)
_RESOLUTION = re.compile(r"^\d{1,2}k( resolution| uhd| hd)?$|^\d{3,4}p$", re.I)

# Weight syntax. Counting: one hit per weighted phrase.
_A1111_WEIGHT = re.compile(r"\(([^()]*?):\s*-?\d+(?:\.\d+)?\)")  # (word:1.3)
_NESTED_PARENS = re.compile(r"\({2,}([^()]*)\){2,}")  # ((word)) / (((word)))
_SQUARE = re.compile(r"\[([^\[\]]*)\]")  # [word]
_CURLY = re.compile(r"\{([^{}]*)\}")  # {word}
_MJ_WEIGHT = re.compile(r"::\s*-?\d+(?:\.\d+)?")  # ::1.5
_SPACES = re.compile(r"\s+")


def count_weights(prompt: str) -> int:
    """Number of weighted phrases in any of the common syntaxes."""
    return sum(len(p.findall(prompt)) for p in (_A1111_WEIGHT, _NESTED_PARENS, _SQUARE, _CURLY, _MJ_WEIGHT))


def strip_weights(prompt: str) -> str:
    """``prompt`` with weight syntax removed and the weighted words kept: ``(red:1.3) [cat]`` -> ``red cat``."""
    text = _MJ_WEIGHT.sub("", prompt)
    for _ in range(4):  # nested forms unwrap from the inside out
        before = text
        text = _A1111_WEIGHT.sub(r"\1", text)
        text = _SQUARE.sub(r"\1", text)
        text = _CURLY.sub(r"\1", text)
        text = re.sub(r"\(([^():]*)\)", r"\1", text)
        if text == before:
            break
    return _SPACES.sub(" ", text).strip()


def segments(prompt: str) -> list[str]:
    """Comma / pipe / semicolon separated parts of a prompt, weights removed, empty parts dropped."""
    parts = re.split(r"[,|;]", strip_weights(prompt))
    return [p.strip(" .!-") for p in parts if p.strip(" .!-")]


def is_modifier(segment: str) -> bool:
    """True when a segment is a style modifier rather than content (see the module docstring)."""
    s = _SPACES.sub(" ", segment.lower()).strip(" .!-")
    return bool(s in MODIFIER_PHRASES or _MODIFIER_PREFIX.match(s) or _RESOLUTION.match(s))


@dataclass(frozen=True)
class PromptFeatures:
    chars: int  # characters after stripping surrounding whitespace
    words: int  # whitespace-separated words
    commas: int  # comma count (tag lists are comma separated)
    modifiers: int  # comma segments that are style modifiers
    weights: int  # weighted phrases (any syntax)


def prompt_features(prompt: str) -> PromptFeatures:
    text = prompt.strip()
    return PromptFeatures(
        chars=len(text), words=len(text.split()), commas=text.count(","),
        modifiers=sum(is_modifier(s) for s in segments(text)), weights=count_weights(text),
    )


@dataclass
class QualityConfig:
    low_max_chars: int = 60  # a low-quality prompt has at most this many characters (paper's mean: 40)
    low_max_commas: int = 1  # ... and at most this many commas (plain text, not a tag list)
    high_min_chars: int = 80  # a high-quality prompt has at least this many characters (paper's mean: 198)
    high_min_signals: int = 3  # ... and at least this many style modifiers + weighted phrases

    def __post_init__(self):
        for name in ("low_max_chars", "low_max_commas", "high_min_chars", "high_min_signals"):
            if getattr(self, name) < 0:
                raise ValueError(f"QualityConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.high_min_chars <= self.low_max_chars:
            raise ValueError(f"high_min_chars ({self.high_min_chars}) must exceed low_max_chars "
                             f"({self.low_max_chars}) so no prompt is both low and high")


def classify(prompt: str, cfg: QualityConfig | None = None) -> str:
    """'low', 'high' or 'mid' for one prompt (see the module docstring for the rules)."""
    cfg = cfg or QualityConfig()
    f = prompt_features(prompt)
    if f.chars >= cfg.high_min_chars and f.modifiers + f.weights >= cfg.high_min_signals:
        return "high"
    if 0 < f.chars <= cfg.low_max_chars and f.modifiers == 0 and f.weights == 0 and f.commas <= cfg.low_max_commas:
        return "low"
    return "mid"
