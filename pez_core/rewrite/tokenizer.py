"""The one tokenizer convention every stage shares: a pad token, falling back to EOS when there is none."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def ensure_pad_token(tokenizer) -> None:
    """Give ``tokenizer`` a pad token (GPT-2 and some BLOOM exports have none): its EOS token.

    Padding is always masked (attention masks, loss masks, last-non-pad pooling), so EOS serves; a
    tokenizer with neither cannot batch and is refused."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has neither a pad nor an EOS token")
        log.info("tokenizer has no pad token: using its EOS token %r", tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
