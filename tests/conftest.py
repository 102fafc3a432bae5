"""Shared fixtures: tiny models built offline, saved, and loaded back through the users' loading path."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # an accidental hub call fails at once instead of hanging
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

# Fixture modules shared by several test files (add new ones here).
pytest_plugins = ["tests.fixtures_ray", "tests.fixtures_s3", "tests.fixtures_lm", "tests.fixtures_seaweed", "tests.fixtures_scoring"]


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """The `tiny` preset saved as an open_clip folder (open_clip_config.json + safetensors)."""
    from pez_core import load_clip, save_clip
    from pez_core.presets import TINY_MODEL

    folder = tmp_path_factory.mktemp("tiny_clip")
    save_clip(load_clip("tiny", device="cpu"), folder, TINY_MODEL)
    return folder


@pytest.fixture(scope="session")
def tiny_clip(tiny_clip_dir):
    """A tiny CLIP (width 64, 2 layers, the real 49408-token vocabulary) loaded from disk."""
    from pez_core import load_clip

    return load_clip(str(tiny_clip_dir), device="cpu")


@pytest.fixture(scope="session")
def sample_images():
    from pipelines.io.samples import make_sample_image

    return [make_sample_image(seed) for seed in range(4)]
