"""The world's renderer as a text-to-image generator: ``Generator(GenerationConfig(model="world"))``."""

from __future__ import annotations

import logging
from typing import Sequence

log = logging.getLogger(__name__)

WORLD_MODEL = "world"  # the GenerationConfig.model name that selects this generator


class WorldGenerator:
    """``generate(prompts, seeds)``: one image per (prompt, seed), drawn by ``pez_core.world.render``.

    ``cfg.size`` is the image size (default 64); steps, guidance, dtype and batch size do not apply."""

    def __init__(self, cfg, device: str | None = None):
        self.cfg = cfg
        self.size = cfg.size or 64
        log.info("world generator at %d px", self.size)

    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> list:
        from ..world.render import render

        if len(prompts) != len(seeds):
            raise ValueError(f"generate needs one seed per prompt, got {len(prompts)} prompts and {len(seeds)} seeds")
        return [render(p, int(s), self.size) for p, s in zip(prompts, seeds)]
