"""Session fixtures: tiny causal LMs (random weights, offline BPE tokenizer) saved to disk.

Tests load them with ``AutoModelForCausalLM.from_pretrained(path)``, the same call users make for
real weights such as ``alibaba-pai/pai-bloom-1b1-text2prompt-sd``.
"""

import pytest


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory):
    """A tiny BloomForCausalLM (hidden 64, 2 layers, 4 heads, 512-token byte-level BPE) folder."""
    from pez_core.rewrite.tiny import build_tiny_lm

    return build_tiny_lm(tmp_path_factory.mktemp("tiny_bloom"), arch="bloom", seed=0)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory):
    """The same as ``tiny_lm_dir`` with the GPT-2 architecture (absolute positions)."""
    from pez_core.rewrite.tiny import build_tiny_lm

    return build_tiny_lm(tmp_path_factory.mktemp("tiny_gpt2"), arch="gpt2", seed=0)


def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def one_torch_thread():
    """Tiny models on a shared 2-core machine: one thread is faster and steadier than two."""
    yield from _one_thread()


@pytest.fixture(scope="module")
def one_torch_thread_module():
    """``one_torch_thread`` for a whole module (and its module-scoped fixtures), restored after it."""
    yield from _one_thread()
