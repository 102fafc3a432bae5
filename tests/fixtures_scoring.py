"""Session fixtures: tiny scoring models built offline and saved as the real ones are published."""

import pytest


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory):
    """A random tiny StableDiffusionPipeline folder (save_pretrained, fp32, DDIM, no safety checker)."""
    from pez_core.scoring.tiny import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd"))


@pytest.fixture(scope="session")
def tiny_pickscore_dir(tmp_path_factory):
    """A random tiny transformers CLIPModel + CLIPProcessor folder standing in for PickScore."""
    from pez_core.scoring.tiny import build_tiny_pickscore

    return build_tiny_pickscore(tmp_path_factory.mktemp("tiny_pickscore"))


@pytest.fixture(scope="session")
def tiny_aesthetic_path(tmp_path_factory):
    """The LAION aesthetic MLP with random weights over the `tiny` CLIP preset's 64-wide embeddings."""
    from pez_core.scoring.tiny import build_tiny_aesthetic

    return build_tiny_aesthetic(tmp_path_factory.mktemp("tiny_aesthetic") / "aesthetic.pth", input_dim=64)
