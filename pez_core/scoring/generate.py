"""Text-to-image generation through diffusers, deterministic per seed.

A model is a Hub id or a local folder written by ``save_pretrained``; ``AutoPipelineForText2Image``
picks the pipeline class from its ``model_index.json`` (StableDiffusionPipeline for SD 1.x / 2.x,
StableDiffusionXLPipeline for SDXL). Each image has its own CPU ``torch.Generator`` seeded with its
seed, so an image depends only on (prompt, seed, settings), never on which images shared its batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch

from .defaults import PEZ_GENERATOR, BEAUTIFULPROMPT_GENERATOR  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)



@dataclass
class GenerationConfig:
    model: str = PEZ_GENERATOR  # diffusers model id or local folder (SD 1.x, SD 2.x, SDXL)
    steps: int = 25  # denoising steps (PEZ 25, BeautifulPrompt 20); 2 for tiny test models
    guidance: float = 9.0  # classifier-free guidance scale (PEZ 9, SD default 7.5); <= 1 disables it
    size: int | None = None  # image height = width in pixels (multiple of 8); None = the model's default
    negative_prompt: str | None = None  # the same negative prompt for every image
    batch_size: int = 4  # images per pipeline call (memory bound: 4-8 at 512 px on a 24 GB GPU)
    dtype: str = "auto"  # auto (fp16 on GPU, fp32 on CPU) | fp16 | bf16 | fp32

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.size is not None and (self.size < 8 or self.size % 8):
            raise ValueError(f"size must be a positive multiple of 8, got {self.size}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.dtype not in ("auto", "fp16", "bf16", "fp32"):
            raise ValueError(f"dtype must be auto, fp16, bf16 or fp32, got {self.dtype!r}")


_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


class Generator:
    """One loaded pipeline; ``generate(prompts, seeds)`` returns one PIL image per (prompt, seed).

    ``GenerationConfig(model="world")`` gives the world's renderer instead (``scoring.world``)."""

    def __new__(cls, cfg: GenerationConfig, device: str | None = None):
        if cls is Generator and cfg.model == "world":
            from .world import WorldGenerator

            return WorldGenerator(cfg, device)
        return super().__new__(cls)

    def __init__(self, cfg: GenerationConfig, device: str | None = None):
        from diffusers import AutoPipelineForText2Image

        self.cfg = cfg
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = _DTYPES.get(cfg.dtype) or (torch.float16 if self.device.type == "cuda" else torch.float32)
        try:
            self.pipe = AutoPipelineForText2Image.from_pretrained(cfg.model, dtype=dtype)
        except Exception as e:  # noqa: BLE001 -- hub, file and config errors all mean "cannot load this model"
            raise OSError(f"cannot load text-to-image model {cfg.model!r}: "
                          f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}") from e
        self.pipe = self.pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        log.info("loaded %s (%s) on %s", cfg.model, type(self.pipe).__name__, self.device)

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> list:
        """Image i from (prompts[i], seeds[i]); computed ``batch_size`` at a time."""
        if len(prompts) != len(seeds):
            raise ValueError(f"generate needs one seed per prompt, got {len(prompts)} prompts and {len(seeds)} seeds")
        cfg, images = self.cfg, []
        for i in range(0, len(prompts), cfg.batch_size):
            batch, batch_seeds = list(prompts[i: i + cfg.batch_size]), seeds[i: i + cfg.batch_size]
            kwargs = {"height": cfg.size, "width": cfg.size} if cfg.size else {}
            if cfg.negative_prompt:
                kwargs["negative_prompt"] = [cfg.negative_prompt] * len(batch)
            out = self.pipe(batch, num_inference_steps=cfg.steps, guidance_scale=cfg.guidance,
                            generator=[torch.Generator("cpu").manual_seed(int(s)) for s in batch_seeds],
                            output_type="pil", **kwargs)
            images += out.images
        return images
