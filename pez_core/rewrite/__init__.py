"""BeautifulPrompt: instruction templates, a batched rewriter, pair data; tiny offline models for tests.

Plain torch and transformers, no Ray. Heavy imports live in the submodules that need them, so importing
``pez_core.rewrite.templates`` stays cheap.
"""

from .templates import DEFAULT_TEMPLATE, MAX_RAW_CHARS, TEMPLATES, Template, format_prompt, get_template

__all__ = ["DEFAULT_TEMPLATE", "MAX_RAW_CHARS", "TEMPLATES", "Template", "format_prompt", "get_template"]
