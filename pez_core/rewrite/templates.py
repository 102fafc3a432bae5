"""Instruction templates of BeautifulPrompt: the text a rewriting LM is given before its completion.

v1 is the template of the paper and of the published ``alibaba-pai/pai-bloom-1b1-text2prompt-sd``:

    Instruction: Give a simple description of the image to generate a drawing prompt.
    Input: {raw_prompt}
    Output:

``format_prompt`` returns exactly that text, ending right after ``Output:``: the model generates the
completion from there. In SFT the completion is one space followed by the high-quality prompt and the EOS
token (``sft_texts``), so a model trained on ``"Output: " + prompt`` continues ``"Output:"`` with a
space-prefixed word, which is how byte-level BPE tokenisers (BLOOM, GPT-2) tokenise a word after a space.

v2 is the longer template of ``alibaba-pai/pai-bloom-1b1-text2prompt-sd-v2``, which explains the weight
syntax and asks for related, comma-separated tags.
"""

from __future__ import annotations

from dataclasses import dataclass

# Raw prompts longer than this many characters are rejected (DiffusionDB's low-quality prompts average
# 40 characters, the high-quality ones 198; 1000 leaves room for anything a user types).
MAX_RAW_CHARS = 1000


@dataclass(frozen=True)
class Template:
    name: str  # registry key, e.g. "v1"
    text: str  # the instruction with one "{raw_prompt}" slot, ending where the completion starts
    separator: str = " "  # put between the template text and the target in SFT (paper: one space)
    description: str = ""  # one line for --help and error messages

    def __post_init__(self):
        if self.text.count("{raw_prompt}") != 1:
            raise ValueError(f"template {self.name!r}: needs exactly one '{{raw_prompt}}' slot")
        if self.text != self.text.rstrip():
            raise ValueError(f"template {self.name!r}: must end where the completion starts (no trailing space)")


TEMPLATES: dict[str, Template] = {
    "v1": Template(
        name="v1",
        text=(
            "Instruction: Give a simple description of the image to generate a drawing prompt.\n"
            "Input: {raw_prompt}\n"
            "Output:"
        ),
        description="the paper's template (pai-bloom-1b1-text2prompt-sd)",
    ),
    "v2": Template(
        name="v2",
        text=(
            "Converts a simple image description into a prompt. Prompts are formatted as multiple related "
            "tags separated by commas, plus you can use () to increase the weight, [] to decrease the "
            "weight, or use a number to specify the weight. You should add appropriate words to make the "
            "images described in the prompt more aesthetically pleasing, but make sure there is a "
            "correlation between the input and output.\n"
            "### Input: {raw_prompt}\n"
            "### Output:"
        ),
        description="the longer template of pai-bloom-1b1-text2prompt-sd-v2 (weight syntax, tags)",
    ),
}

DEFAULT_TEMPLATE = "v1"


def get_template(version: str) -> Template:
    """The template registered under ``version``; a ValueError lists the valid names otherwise."""
    try:
        return TEMPLATES[version]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown template version {version!r}; valid versions: {', '.join(sorted(TEMPLATES))}"
        ) from None


def check_raw_prompt(raw: str, max_chars: int = MAX_RAW_CHARS) -> str | None:
    """Why ``raw`` cannot be rewritten (a short reason), or None when it can."""
    if not isinstance(raw, str):
        return f"not a string but {type(raw).__name__}"
    text = raw.strip()
    if not text:
        return "empty prompt" if not raw else "prompt is only whitespace"
    if len(text) > max_chars:
        return f"prompt has {len(text)} characters, more than the maximum {max_chars}"
    return None


def clean_raw_prompt(raw: str) -> str:
    """Strip surrounding whitespace and fold line breaks to spaces (the template uses lines as fields)."""
    return " ".join(part.strip() for part in raw.strip().splitlines() if part.strip())


def format_prompt(raw: str, version: str = DEFAULT_TEMPLATE, *, max_chars: int = MAX_RAW_CHARS) -> str:
    """The text the model is given for ``raw``, ending right where the completion starts.

    Raises ValueError for an unknown version (listing the valid ones), an empty or whitespace-only
    prompt, or one longer than ``max_chars`` characters.
    """
    template = get_template(version)
    reason = check_raw_prompt(raw, max_chars)
    if reason is not None:
        raise ValueError(f"raw prompt {_preview(raw)}: {reason}")
    return template.text.format(raw_prompt=clean_raw_prompt(raw))


def sft_texts(raw: str, prompt: str, version: str = DEFAULT_TEMPLATE, *,
              max_chars: int = MAX_RAW_CHARS) -> tuple[str, str]:
    """(context, completion) for supervised fine-tuning: the loss goes on the completion only.

    completion = separator + the high-quality prompt (the caller appends the tokenizer's EOS token).
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"target prompt {_preview(prompt)}: empty")
    context = format_prompt(raw, version, max_chars=max_chars)
    return context, get_template(version).separator + prompt.strip()


def reward_input(raw: str, prompt: str) -> str:
    """Input of the PickScore reward model r_ps(raw, prompt), as in the paper's code."""
    return f"Input: {clean_raw_prompt(raw)}\nOutput: {prompt.strip()}"


def _preview(value, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
