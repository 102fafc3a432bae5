"""The world's visual aesthetic (a score of rendered pixels) and the LAION-style MLP trained to predict it.

``visual_aesthetic(image)`` is the target, on the AVA-like scale 0 to 10, computed from pixels only:

    10 * (0.30 * saturation + 0.25 * contrast + 0.25 * sharpness + 0.20 * composition)

- saturation: mean HSV saturation of the image, in [0, 1] (``dull`` renders lower it);
- contrast: RMS contrast, the std of the pixel values (root mean of the per-channel variances) / 0.35,
  capped at 1 (``dull`` lowers it; colour pairs matter);
- sharpness: mean absolute Laplacian (averaged over R, G, B) over the pixels where the image has edges
  (Laplacian > 0.02), / 0.5, capped at 1 (``blurry`` lowers it; a per-edge-pixel mean, so more edges
  (outlines, stripes) do not count as sharper);
- composition: the object's share of the image (pixels far from the background colour) / 0.10, capped at
  1, times its centring, 1 - distance of its centroid from the image centre / half the side (``large``,
  ``center`` and ``filled`` raise it).

The words the world's prompts carry move these terms: ``sharp``/``crisp``, ``vivid``, ``masterpiece``,
``large``, ``center`` and ``filled`` raise the score, ``blurry``, ``dull``, ``small`` and off-centre
positions lower it. The scorer the labelling job uses is the LAION predictor's MLP (``AestheticMLP``)
over the normalised ``world`` CLIP image embedding, trained by ``promptmine world train-aesthetic`` to
regress this target (``train_world_aesthetic``); its weights ship as ``pez_core/world_models/aesthetic``
(``--aesthetic-weights world``).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

WORLD_AESTHETIC_WEIGHTS = Path(__file__).resolve().parent.parent / "world_models" / "aesthetic" / \
    "world-aesthetic.safetensors"
WEIGHTS = {"saturation": 0.30, "contrast": 0.25, "sharpness": 0.25, "composition": 0.20}


def aesthetic_terms(image) -> dict[str, float]:
    """The four terms of ``visual_aesthetic`` (each in [0, 1]) of a PIL image."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    hsv = np.asarray(image.convert("HSV"), dtype=np.float32) / 255.0
    lap = np.abs(4 * rgb[1:-1, 1:-1] - rgb[:-2, 1:-1] - rgb[2:, 1:-1] - rgb[1:-1, :-2] - rgb[1:-1, 2:]).mean(-1)
    edges = lap > 0.02
    sharp = float(lap[edges].mean()) if edges.any() else 0.0
    h, w = rgb.shape[:2]
    corners = np.stack([rgb[0, 0], rgb[0, -1], rgb[-1, 0], rgb[-1, -1]])
    background = np.median(corners, axis=0)
    fg = np.abs(rgb - background).sum(-1) > 0.25
    share = float(fg.mean())
    if fg.any():
        ys, xs = np.nonzero(fg)
        dist = np.hypot(ys.mean() - (h - 1) / 2, xs.mean() - (w - 1) / 2) / (min(h, w) / 2)
        centring = max(0.0, 1.0 - float(dist))
    else:
        centring = 0.0
    rms = float(np.sqrt(rgb.var(axis=(0, 1)).mean()))
    return {"saturation": float(hsv[..., 1].mean()), "contrast": min(1.0, rms / 0.35),
            "sharpness": min(1.0, sharp / 0.5), "composition": min(1.0, share / 0.10) * centring}


def visual_aesthetic(image) -> float:
    """The world's aesthetic of a rendered image, 0 to 10 (see the module docstring)."""
    terms = aesthetic_terms(image)
    return 10.0 * sum(WEIGHTS[k] * terms[k] for k in WEIGHTS)


@dataclass
class WorldAestheticConfig:
    images: int = 4000  # rendered training images (+ 10% held out)
    epochs: int = 30  # passes over them
    batch: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    clip: str = "world"  # the CLIP whose image embeddings the MLP reads
    seed: int = 0
    threads: int = 1

    def __post_init__(self):
        if self.images < 20 or self.epochs < 1 or self.batch < 1 or self.lr <= 0:
            raise ValueError(f"need images >= 20, epochs >= 1, batch >= 1, lr > 0; got {self}")


def training_images(n: int, seed: int) -> list:
    """``n`` renders of random world prompts: captions of any styles with words left out, raw prompts,
    and the loop's high-quality prompts, each at a random seed."""
    from ..world.captions import caption
    from ..world.grammar import sample_scene
    from ..world.prompts import high_prompt, low_prompt, quality_scene
    from ..world.render import render

    rng = random.Random(f"world-aesthetic:{seed}")
    out = []
    for i in range(n):
        kind = i % 3
        scene = quality_scene(rng) if kind == 2 else sample_scene(rng)
        text = (caption(scene, rng, drop=0.3) if kind == 0 else low_prompt(scene, rng) if kind == 1
                else high_prompt(scene, rng))
        out.append(render(text, rng.randrange(1 << 30)))
    return out


def train_world_aesthetic(cfg: WorldAestheticConfig, log_fn=None) -> tuple[dict, dict]:
    """Train the MLP; returns (state dict in the released layout, stats with held-out MSE and Pearson)."""
    import torch

    from .aesthetic import AestheticMLP
    from .clip_score import ClipScorer

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    n_eval = max(10, cfg.images // 10)
    images = training_images(cfg.images + n_eval, cfg.seed)
    target = torch.tensor([visual_aesthetic(im) for im in images])
    feats = ClipScorer(cfg.clip, device="cpu", batch_size=256).image_features(images).float()
    x, y, ex, ey = feats[n_eval:], target[n_eval:], feats[:n_eval], target[:n_eval]
    mlp = AestheticMLP(feats.shape[1])
    opt = torch.optim.AdamW(mlp.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * -(-len(x) // cfg.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.05)
    gen = torch.Generator().manual_seed(cfg.seed)
    history = []
    for epoch in range(cfg.epochs):
        mlp.train()
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), cfg.batch):
            idx = order[i: i + cfg.batch]
            loss = torch.nn.functional.mse_loss(mlp(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / len(x))
        if log_fn and (epoch + 1) % max(1, cfg.epochs // 5) == 0:
            log_fn(f"epoch {epoch + 1}/{cfg.epochs}: train mse {history[-1]:.4f}")
    mlp.eval()
    with torch.no_grad():
        pred = mlp(ex)
    stats = {"train_images": len(x), "eval_images": n_eval, "train_mse": history[-1],
             "eval_mse": float(((pred - ey) ** 2).mean()),
             "eval_pearson": float(torch.corrcoef(torch.stack([pred, ey]))[0, 1]),
             "target_mean": float(target.mean()), "target_std": float(target.std()), "clip": cfg.clip}
    return {k: v.detach().clone() for k, v in mlp.state_dict().items()}, stats


def save_weights(state: dict, path: str | Path, fp16: bool = True) -> Path:
    """The MLP in the released key layout, as safetensors (fp16 by default: 0.55 MB for a 128-wide CLIP)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: (v.half() if fp16 else v.float()).contiguous() for k, v in state.items()}, str(path))
    return path
