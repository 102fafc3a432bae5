"""Captioners: describe the image of a high-quality prompt; the caption becomes its low-quality pair.

A captioner is any object with ``caption(images: list[PIL.Image.Image]) -> list[str]``. The built-in
one runs BLIP (``Salesforce/blip-image-captioning-base`` by default, the captioner the paper used) through
transformers; any image-to-text model with the same processor / generate interface works by id.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

log = logging.getLogger(__name__)

DEFAULT_BLIP = "Salesforce/blip-image-captioning-base"


@runtime_checkable
class Captioner(Protocol):
    def caption(self, images: list) -> list[str]: ...


@dataclass
class BlipConfig:
    model: str = DEFAULT_BLIP  # Hugging Face id or local folder of a BLIP captioning model
    device: str | None = None  # torch device (default: cuda if available, else cpu)
    batch_size: int = 16  # images per generate call
    max_new_tokens: int = 30  # caption length cap (BLIP captions are ~10 words)
    num_beams: int = 3  # beam search width (1 = greedy)

    def __post_init__(self):
        if self.batch_size < 1 or self.max_new_tokens < 1 or self.num_beams < 1:
            raise ValueError("BlipConfig: batch_size, max_new_tokens and num_beams must be >= 1")


class BlipCaptioner:
    """BLIP image captioning (``BlipForConditionalGeneration``), loaded lazily by id or folder."""

    def __init__(self, config: BlipConfig | None = None):
        import torch
        from transformers import AutoProcessor, BlipForConditionalGeneration

        self.config = config or BlipConfig()
        self.device = torch.device(self.config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        try:
            self.processor = AutoProcessor.from_pretrained(self.config.model)
            self.model = BlipForConditionalGeneration.from_pretrained(self.config.model).to(self.device).eval()
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot load captioner {self.config.model!r} (a BLIP id or folder; offline runs "
                             f"need it cached): {e}") from e

    def caption(self, images: list) -> list[str]:
        import torch

        out: list[str] = []
        bs = self.config.batch_size
        for start in range(0, len(images), bs):
            batch = [im.convert("RGB") for im in images[start:start + bs]]
            inputs = self.processor(images=batch, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                ids = self.model.generate(**inputs, max_new_tokens=self.config.max_new_tokens,
                                          num_beams=self.config.num_beams)
            out.extend(t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True))
        return out
