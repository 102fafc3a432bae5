"""CLIP scores with a reference CLIP that took no part in the optimisation.

- image-image similarity (PEZ, section 4.1): cosine between normalised image features of a generated
  image and of its target, with a larger CLIP than the one PEZ optimised against (OpenCLIP ViT-g-14).
- text-image CLIP score (BeautifulPrompt's relevance metric): ``100 * max(cos(text, image), 0)``, the
  convention of torchmetrics' CLIPScore.

Shapes: k images or texts, e joint embedding width.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import torch

from .defaults import DEFAULT_REFERENCE_CLIP  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)



def parse_clip_spec(spec: str) -> tuple[str, str | None]:
    """'ViT-g-14/laion2b_s34b_b88k' -> ('ViT-g-14', 'laion2b_s34b_b88k'); a preset or a folder -> (spec, None)."""
    from ..presets import PRESETS

    if spec in PRESETS or os.path.isdir(spec.removeprefix("local-dir:")):
        return spec, None
    name, sep, tag = spec.partition("/")
    return (name, tag) if sep else (spec, None)


class ClipScorer:
    """A frozen open_clip model loaded through ``pez_core.load_clip`` (preset, 'name/tag' or folder)."""

    def __init__(self, spec: str = DEFAULT_REFERENCE_CLIP, device: str | None = None, batch_size: int = 32):
        from ..clip import load_clip

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        name, tag = parse_clip_spec(spec)
        self.clip = load_clip(name, pretrained=tag, device=device)
        self.name, self.batch_size = spec, batch_size

    def image_features(self, images: Sequence) -> torch.Tensor:
        """Normalised image features (k, e), computed in batches."""
        chunks = [self.clip.encode_images(images[i: i + self.batch_size])
                  for i in range(0, len(images), self.batch_size)]
        return torch.cat(chunks).cpu()

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """Normalised text features (k, e) through open_clip's padded encoder (long texts truncated)."""
        chunks = [self.clip.encode_texts(list(texts[i: i + self.batch_size]))
                  for i in range(0, len(texts), self.batch_size)]
        return torch.cat(chunks).cpu()

    def image_similarity(self, images: Sequence, targets: torch.Tensor) -> torch.Tensor:
        """cos(image i, target i) for k images and k target feature rows (k, e) (or one row, broadcast)."""
        feats = self.image_features(images)
        if targets.dim() == 1:
            targets = targets[None]
        if targets.shape[0] not in (1, feats.shape[0]) or targets.shape[1] != feats.shape[1]:
            raise ValueError(f"targets of shape {tuple(targets.shape)} do not match {len(images)} images "
                             f"of width {feats.shape[1]}")
        return (feats * targets.to(feats)).sum(-1)

    def clip_score(self, texts: Sequence[str], images: Sequence) -> torch.Tensor:
        """100 * max(cos(text i, image i), 0) for k texts and k images."""
        if len(texts) != len(images):
            raise ValueError(f"clip_score needs as many texts as images, got {len(texts)} and {len(images)}")
        cos = (self.text_features(texts) * self.image_features(images)).sum(-1)
        return 100.0 * cos.clamp(min=0)
