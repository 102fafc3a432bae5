"""The LAION aesthetic predictor (improved-aesthetic-predictor, "sac+logos+ava1-l14-linearMSE").

An MLP 768-1024-128-64-16-1 with dropout between layers and no activations, over the L2-normalised
CLIP ViT-L/14 image embedding; output on the AVA 1 to 10 scale. Weights come from a file path: the
released ``.pth`` state dict (keys ``layers.{0,2,4,6,7}.{weight,bias}``) or the same keys in safetensors.
The input width is the CLIP's embedding width (768 for ViT-L/14), so a tiny CLIP works with a tiny MLP.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import torch
from torch import nn

from .defaults import DEFAULT_AESTHETIC_CLIP  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

HIDDEN = (1024, 128, 64, 16, 1)  # widths after the input
LINEAR_INDICES = (0, 2, 4, 6, 7)  # positions of the Linear layers in the released nn.Sequential


class AestheticWeightsError(ValueError):
    """The weights file is missing, unreadable, or has the wrong keys or shapes; names the file."""


class AestheticMLP(nn.Module):
    def __init__(self, input_dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (k, d) normalised embeddings -> (k,)
        return self.layers(x).squeeze(-1)


def _read_state(path: str) -> dict:
    if not os.path.isfile(path):
        raise AestheticWeightsError(f"aesthetic weights {path!r}: no such file")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- torch raises many types for a bad file
        raise AestheticWeightsError(f"aesthetic weights {path!r}: cannot read ({type(e).__name__}: {e})") from e
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise AestheticWeightsError(f"aesthetic weights {path!r}: not a state dict ({type(state).__name__})")
    return state


SHIPPED_WEIGHTS = {"world": "the world's aesthetic stand-in over the `world` CLIP (scoring/world_aesthetic.py)"}


def resolve_weights(spec: str | os.PathLike) -> str:
    """A weights file path; the name ``world`` is the shipped world aesthetic MLP."""
    spec = os.fspath(spec)
    if spec == "world":
        from .world_aesthetic import WORLD_AESTHETIC_WEIGHTS

        return str(WORLD_AESTHETIC_WEIGHTS)
    return spec


def load_aesthetic_mlp(path: str | os.PathLike, input_dim: int | None = None) -> AestheticMLP:
    """The MLP of ``path`` (or a shipped name, ``world``); ``input_dim`` (the CLIP's width) is checked when given."""
    path = resolve_weights(path)
    state = _read_state(path)
    expected = {f"layers.{i}.{p}" for i in LINEAR_INDICES for p in ("weight", "bias")}
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise AestheticWeightsError(f"aesthetic weights {path!r}: expected keys layers.{{0,2,4,6,7}}.weight/bias; "
                                    f"missing {missing or 'none'}, unexpected {extra[:5] or 'none'}")
    width = state["layers.0.weight"].shape[1]
    if input_dim is not None and width != input_dim:
        raise AestheticWeightsError(f"aesthetic weights {path!r}: first layer takes {width} features but the "
                                    f"CLIP gives {input_dim} (the LAION predictor needs ViT-L/14: 768)")
    mlp = AestheticMLP(width)
    wanted = {k: tuple(v.shape) for k, v in mlp.state_dict().items()}
    wrong = [f"{k} {tuple(state[k].shape)} (need {wanted[k]})" for k in sorted(wanted)
             if tuple(state[k].shape) != wanted[k]]
    if wrong:
        raise AestheticWeightsError(f"aesthetic weights {path!r}: wrong shapes: {', '.join(wrong)}")
    mlp.load_state_dict({k: v.float() for k, v in state.items()})
    return mlp.eval().requires_grad_(False)


class AestheticScorer:
    """CLIP image embedding (normalised) -> MLP -> score; ``clip`` as ``ClipScorer`` takes it."""

    def __init__(self, weights: str | os.PathLike, clip: str = DEFAULT_AESTHETIC_CLIP, device: str | None = None,
                 batch_size: int = 32):
        from .clip_score import ClipScorer

        self.clip = ClipScorer(clip, device=device, batch_size=batch_size)
        width = getattr(self.clip.clip.model.visual, "output_dim", None) or self._embed_dim()
        self.mlp = load_aesthetic_mlp(weights, input_dim=width)
        self.weights = resolve_weights(weights)

    def _embed_dim(self) -> int:
        import PIL.Image

        return int(self.clip.image_features([PIL.Image.new("RGB", (32, 32))]).shape[-1])

    @torch.no_grad()
    def score(self, images: Sequence) -> torch.Tensor:
        """Aesthetic score of each image, shape (k,)."""
        return self.score_features(self.clip.image_features(images))

    @torch.no_grad()
    def score_features(self, features: torch.Tensor) -> torch.Tensor:
        """Scores of normalised image embeddings (k, d)."""
        return self.mlp(features.float().cpu())
