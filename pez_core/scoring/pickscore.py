"""PickScore (Kirstain et al. 2023): a CLIP-H/14 fine-tuned on human preferences.

score(text, image) = logit_scale.exp() * cos(text features, image features), about 18 to 23 for real
weights. The model is a transformers ``CLIPModel`` loaded by id or folder; its processor comes from the
base CLIP it was fine-tuned from (PickScore's own repository ships no processor).

Shapes: k texts and images, e projection width.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
import torch.nn.functional as F

from .defaults import DEFAULT_PICKSCORE, DEFAULT_PICKSCORE_PROCESSOR  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)



def _features(out) -> torch.Tensor:
    """transformers 5 returns an output object from get_*_features (projected features in pooler_output)."""
    return out if torch.is_tensor(out) else out.pooler_output


class PickScorer:
    def __init__(self, model: str = DEFAULT_PICKSCORE, processor: str | None = DEFAULT_PICKSCORE_PROCESSOR,
                 device: str | None = None, batch_size: int = 16):
        from transformers import AutoProcessor, CLIPModel

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        try:
            self.processor = AutoProcessor.from_pretrained(processor or model)
            self.model = CLIPModel.from_pretrained(model).to(self.device).eval().requires_grad_(False)
        except Exception as e:  # noqa: BLE001 -- hub, file and config errors all mean "cannot load"
            raise OSError(f"cannot load PickScore model {model!r} / processor {processor or model!r}: "
                          f"{(str(e).splitlines() or [type(e).__name__])[0]}") from e
        self.name, self.batch_size = model, batch_size

    @torch.no_grad()
    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        inputs = self.processor(text=list(texts), padding=True, truncation=True, max_length=77, return_tensors="pt")
        out = self.model.get_text_features(**{k: v.to(self.device) for k, v in inputs.items()})
        return F.normalize(_features(out).float(), dim=-1)

    @torch.no_grad()
    def image_features(self, images: Sequence) -> torch.Tensor:
        inputs = self.processor(images=list(images), return_tensors="pt")
        out = self.model.get_image_features(pixel_values=inputs["pixel_values"].to(self.device))
        return F.normalize(_features(out).float(), dim=-1)

    @torch.no_grad()
    def score(self, texts: Sequence[str], images: Sequence) -> torch.Tensor:
        """PickScore of (text i, image i), shape (k,)."""
        if len(texts) != len(images):
            raise ValueError(f"PickScore needs as many texts as images, got {len(texts)} and {len(images)}")
        scale = self.model.logit_scale.exp().float()
        scores = []
        for i in range(0, len(texts), self.batch_size):
            t = self.text_features(texts[i: i + self.batch_size])
            im = self.image_features(images[i: i + self.batch_size])
            scores.append(scale * (t * im).sum(-1))
        return torch.cat(scores).cpu() if scores else torch.zeros(0)


class ClipPickScorer:
    """A PickScore stand-in from an open_clip model: ``logit_scale.exp() * cos(text, image)``, the same
    formula over another CLIP. ``promptmine label|eval rewrite --pickscore world-ref`` uses it with the
    world's reference CLIP (about 34 * cos), judged against the raw prompt as PickScore is."""

    def __init__(self, spec: str, device: str | None = None, batch_size: int = 64):
        from .clip_score import ClipScorer

        self.clip = ClipScorer(spec.removeprefix("clip:"), device=device, batch_size=batch_size)
        self.name, self.batch_size = spec, batch_size
        self.scale = float(self.clip.clip.model.logit_scale.exp())

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        return self.clip.text_features(texts)

    def image_features(self, images: Sequence) -> torch.Tensor:
        return self.clip.image_features(images)

    @torch.no_grad()
    def score(self, texts: Sequence[str], images: Sequence) -> torch.Tensor:
        """logit_scale * cos of (text i, image i), shape (k,); each distinct text is encoded once."""
        if len(texts) != len(images):
            raise ValueError(f"PickScore needs as many texts as images, got {len(texts)} and {len(images)}")
        if not len(texts):
            return torch.zeros(0)
        distinct = list(dict.fromkeys(texts))
        t = self.text_features(distinct)
        index = {text: i for i, text in enumerate(distinct)}
        t = t[torch.tensor([index[x] for x in texts])]
        return self.scale * (t * self.image_features(images)).sum(-1)


def is_clip_standin(model: str) -> bool:
    """``clip:SPEC`` or a shipped CLIP preset name (world, world-ref, tiny) selects ``ClipPickScorer``."""
    from ..presets import PRESETS

    return model.startswith("clip:") or model in PRESETS


def make_pick_scorer(model: str, processor: str | None = None, device: str | None = None):
    """PickScorer for a transformers CLIPModel id or folder; ClipPickScorer for ``clip:SPEC`` or a preset."""
    if is_clip_standin(model):
        return ClipPickScorer(model, device=device)
    return PickScorer(model, processor, device=device)
