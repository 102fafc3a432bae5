"""Contrastive training of a small open_clip CLIP on the world, as resumable steps a Ray Train job can drive.

Shapes: b batch (per worker), L training text context, e joint embedding width, c classes of one attribute.

The batch of step k is a pure function of (seed, k) (batch.py), and so is the lr (no scheduler state),
so a resumed run sees exactly the same data and schedule.
An auxiliary curriculum (linear heads predicting every attribute from the image and from the text
embedding, its weight decaying to 0) breaks the saddle point where neither tower encodes position.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .batch import HEADS, IGNORE, UNKNOWN_WORD, image_size, make_batch, world_text

log = logging.getLogger(__name__)


@dataclass
class WorldTrainConfig:
    model: str = "promptmine-world-rn"  # open_clip config name (pez_core/model_configs/<name>.json)
    seed: int = 0  # model init and data; the data of step k comes from (seed, k) only
    steps: int = 3000  # optimiser steps (1000-4000)
    batch: int = 64  # global batch (64-256); split over workers by rank
    lr: float = 2e-3  # peak AdamW lr (5e-4 - 3e-3)
    warmup: float = 0.05  # share of steps with a linear warmup; then cosine to lr_end
    lr_end: float = 0.02  # final lr as a share of the peak
    weight_decay: float = 0.05  # AdamW (0-0.2), not on gains, biases, embeddings' logit scale
    text_len: int = 32  # text context used in training (captions are < 30 tokens); the model keeps 77
    two_objects: float = 0.3  # share of two-object scenes
    drop: float = 0.1  # chance each attribute word is left out of a caption (0-0.3)
    filler: float = 0.3  # chance a caption gets 1-3 random non-world tokens (teaches "ignore unknown words")
    aux_weight: float = 1.0  # auxiliary attribute-classification loss weight at step 0 (0 disables)
    aux_until: float = 0.8  # share of steps over which the aux weight decays linearly to 0
    hard_negatives: int = 2  # extra captions per image that differ from its own in one attribute (0-4)
    # the reading phase: read_steps more steps after ``steps`` that train the text tower only (the image
    # tower frozen in eval mode, so image embeddings and what is built on them, such as the aesthetic
    # stand-in, stay valid), with a fresh AdamW (peak read_lr, the same warmup share and cosine), no
    # auxiliary heads, and these shares of the hard negatives replaced by edits of the caption's own text
    # that the renderer reads differently (negatives.hard_negative_captions)
    read_steps: int = 0
    read_lr: float = 5e-4
    read_contradictions: float = 0.35
    read_deletions: float = 0.25
    threads: int = 1  # torch threads per worker

    def __post_init__(self):
        if self.steps < 1 or self.batch < 2:
            raise ValueError(f"steps >= 1 and batch >= 2 needed, got steps={self.steps}, batch={self.batch}")
        if not 0 < self.lr < 1:
            raise ValueError(f"lr must be in (0, 1), got {self.lr}")
        if not (0 <= self.drop < 1 and 0 <= self.filler <= 1 and 0 < self.aux_until <= 1):
            raise ValueError("drop in [0, 1), filler in [0, 1], aux_until in (0, 1] needed")
        if not 0 <= self.hard_negatives <= 8:
            raise ValueError(f"hard_negatives must be in 0..8, got {self.hard_negatives}")
        if self.read_steps < 0 or not 0 < self.read_lr < 1:
            raise ValueError(f"read_steps >= 0 and read_lr in (0, 1) needed, got {self.read_steps}, {self.read_lr}")
        if not (0 <= self.read_contradictions and 0 <= self.read_deletions
                and self.read_contradictions + self.read_deletions <= 1):
            raise ValueError("read_contradictions and read_deletions must be >= 0 and sum to at most 1, got "
                             f"{self.read_contradictions} and {self.read_deletions}")

    @property
    def total_steps(self) -> int:
        """``steps`` of the first phase plus ``read_steps`` of the reading phase."""
        return self.steps + self.read_steps


# ---- model ---------------------------------------------------------------------------------------
def register_configs() -> None:
    from ..clip import _register_configs

    _register_configs()


def encode_text_short(clip: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """open_clip's ``encode_text`` over the first L positions (exact: the mask is causal, pooling at eot)."""
    L = ids.shape[1]
    x = clip.token_embedding(ids) + clip.positional_embedding[:L]
    x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask[:L, :L]))
    x = x[torch.arange(len(ids)), ids.argmax(dim=-1)]
    return x @ clip.text_projection if not isinstance(clip.text_projection, nn.Linear) else clip.text_projection(x)


class WorldTrainModel(nn.Module):
    """The CLIP plus auxiliary heads; ``forward`` does all the work, so DDP can wrap this module."""

    def __init__(self, clip: nn.Module, embed_dim: int):
        super().__init__()
        self.clip = clip
        self.image_heads = nn.ModuleDict({k: nn.Linear(embed_dim, c) for k, c in HEADS.items()})
        self.text_heads = nn.ModuleDict({k: nn.Linear(embed_dim, c) for k, c in HEADS.items()})

    def forward(self, images: torch.Tensor, ids: torch.Tensor, negative_ids: torch.Tensor | None = None):
        img = F.normalize(self.clip.encode_image(images), dim=-1)
        b = len(ids)
        if negative_ids is not None and len(negative_ids):
            ids = torch.cat([ids, negative_ids])  # one text forward for captions and hard negatives
        txt = F.normalize(encode_text_short(self.clip, ids), dim=-1)
        txt, neg = txt[:b], txt[b:]
        # the heads read unit vectors scaled by sqrt(e), so that they can reach confident logits quickly
        s = img.shape[1] ** 0.5
        aux_img = {k: h(s * img) for k, h in self.image_heads.items()}
        aux_txt = {k: h(s * txt) for k, h in self.text_heads.items()}
        return img, txt, self.clip.logit_scale.exp().clamp(max=100), aux_img, aux_txt, neg


def build_model(cfg: WorldTrainConfig) -> WorldTrainModel:
    """Random open_clip CLIP of ``cfg.model`` (seeded by ``cfg.seed``) with the heads, in train mode."""
    import open_clip

    from ..clip import _quiet_random_init_warning

    register_configs()
    torch.manual_seed(cfg.seed)
    with _quiet_random_init_warning():
        clip = open_clip.create_model(cfg.model, pretrained=None, device="cpu")
    embed = open_clip.get_model_config(cfg.model)["embed_dim"]
    tie_unknown_rows(clip)
    return WorldTrainModel(clip, embed).train()


@torch.no_grad()
def tie_unknown_rows(clip: nn.Module) -> None:
    """Give every token the world does not know the embedding of one token, ``UNKNOWN_WORD``.

    The renderer ignores unknown words; so must the CLIP, or PEZ exploits the random rows of the 49k
    tokens the world never trains (a prototype's gibberish prompts outscored the true captions). Training
    captions carry that one unknown token as filler, so the text tower learns to ignore it; the other
    rows get no gradient (and no weight decay), and are set equal to it again before every save."""
    text = world_text()
    emb = clip.token_embedding.weight
    emb[~text.known.to(emb.device)] = emb[text.unknown_id].clone()


def build_optimiser(model: nn.Module, cfg: WorldTrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embedding" in name or "logit_scale" in name else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)


def lr_at(cfg: WorldTrainConfig, step: int) -> float:
    """Linear warmup, then cosine to ``lr_end`` x the peak: over ``steps`` from ``lr``, then again over the
    reading phase's ``read_steps`` from ``read_lr``."""
    if step >= cfg.steps:  # the reading phase: its own step count from 0
        peak, steps, step = cfg.read_lr, cfg.read_steps, step - cfg.steps
    else:
        peak, steps = cfg.lr, cfg.steps
    warm = max(1, int(cfg.warmup * steps))
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return peak * (cfg.lr_end + (1 - cfg.lr_end) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def aux_weight_at(cfg: WorldTrainConfig, step: int) -> float:
    return cfg.aux_weight * max(0.0, 1 - step / (cfg.aux_until * cfg.steps))  # 0 in the reading phase


def loss_of(model: nn.Module, batch: dict, aux_w: float) -> tuple[torch.Tensor, dict]:
    """Symmetric InfoNCE, image -> text also against the hard-negative captions (+ aux_w x head cross-entropy, summed over heads, averaged over the two towers);
    ``model`` may be DDP-wrapped.

    Under DDP each worker contrasts its own slice; gathering features across workers is the caller's."""
    img, txt, scale, aux_img, aux_txt, neg = model(batch["images"], batch["ids"], batch.get("negative_ids"))
    logits = scale * img @ txt.T  # (b, b)
    target = torch.arange(len(img))
    i2t = logits
    if len(neg):  # image -> text also against every hard-negative caption of the batch (empty ones masked)
        neg_logits = (scale * img @ neg.T).masked_fill(~batch["negative_mask"], float("-inf"))
        i2t = torch.cat([logits, neg_logits], dim=1)  # (b, b + b * hard_negatives)
    clip_loss = 0.5 * (F.cross_entropy(i2t, target) + F.cross_entropy(logits.T, target))
    aux = sum(_ce(aux_img[k], batch["image_labels"][k]) + _ce(aux_txt[k], batch["text_labels"][k]) for k in HEADS)
    aux = aux / 2  # summed over heads (a mean over 11 heads made each too weak to move the towers)
    loss = clip_loss + aux_w * aux if aux_w > 0 else clip_loss + 0.0 * aux
    return loss, {"loss": loss.item(), "clip_loss": clip_loss.item(), "aux_loss": aux.item()}


def _ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if (labels != IGNORE).any():
        return F.cross_entropy(logits, labels, ignore_index=IGNORE)
    return logits.sum() * 0.0


@dataclass
class TrainState:
    """Everything besides model and optimiser that a resumed run needs (the lr is a function of the step)."""

    step: int = 0  # the next step to run
    history: list = field(default_factory=list)  # (step, loss, clip_loss, aux_loss) every log_every steps
    seconds: float = 0.0  # training wall time so far


def train_steps(model: nn.Module, optimiser: torch.optim.Optimizer, state: TrainState, cfg: WorldTrainConfig,
                start_step: int, end_step: int, on_step: Callable[[int, dict], None] | None = None,
                rank: int = 0, world_size: int = 1, log_every: int = 50) -> TrainState:
    """Run steps [start_step, end_step): the same weights whether run at once or resumed in pieces."""
    torch.set_num_threads(cfg.threads)
    model.train()
    visual = getattr(model, "module", model).clip.visual
    for step in range(start_step, end_step):
        t0 = time.perf_counter()
        reading = step >= cfg.steps
        if step == cfg.steps and cfg.read_steps:
            optimiser.state.clear()  # the reading phase starts with a fresh AdamW (its moments and step counts)
        if reading:  # the image tower stays as it is: eval mode, so its batch-norm statistics do not move
            visual.eval()
        batch = make_batch(cfg, step, rank, world_size)
        for g in optimiser.param_groups:
            g["lr"] = lr_at(cfg, step)
        loss, info = loss_of(model, batch, aux_weight_at(cfg, step))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        if reading:  # ... and no update: AdamW skips a parameter without a gradient (no decay either)
            for p in visual.parameters():
                p.grad = None
        optimiser.step()
        state.step, state.seconds = step + 1, state.seconds + time.perf_counter() - t0
        if step % log_every == 0 or step == end_step - 1:
            state.history.append((step, round(info["loss"], 4), round(info["clip_loss"], 4), round(info["aux_loss"], 4)))
            log.info("step %d loss %.4f clip %.4f aux %.4f (%.0f s)", step, info["loss"], info["clip_loss"],
                     info["aux_loss"], state.seconds)
        if on_step is not None:
            on_step(step, info)
    return state


def state_dict(model: nn.Module, optimiser: torch.optim.Optimizer, state: TrainState, cfg: WorldTrainConfig) -> dict:
    """All that resuming needs (``model`` may be DDP-wrapped: its ``module`` is saved)."""
    m = getattr(model, "module", model)
    return {"model": m.state_dict(), "optimiser": optimiser.state_dict(), "state": asdict(state), "config": asdict(cfg)}


def load_state_dict(model: nn.Module, optimiser: torch.optim.Optimizer, sd: dict) -> TrainState:
    getattr(model, "module", model).load_state_dict(sd["model"])
    optimiser.load_state_dict(sd["optimiser"])
    st = sd["state"]
    return TrainState(step=st["step"], history=[tuple(h) for h in st["history"]], seconds=st["seconds"])


def as_clip(model: nn.Module, cfg: WorldTrainConfig):
    """A ClipModel (eval view) of the trained CLIP, for zero-shot evaluation and PEZ."""
    import open_clip

    from ..clip import ClipModel

    clip = getattr(getattr(model, "module", model), "clip", model)
    tie_unknown_rows(clip)
    preprocess = open_clip.image_transform(image_size(cfg), is_train=False)
    return ClipModel(model=clip, preprocess=preprocess, tokenizer=world_text().tok, name=cfg.model,
                     device=torch.device("cpu"), tied_word=UNKNOWN_WORD)


def save_world_clip(model: nn.Module, folder: str | Path, cfg: WorldTrainConfig, state: TrainState | None = None,
                    extra: dict | None = None) -> Path:
    """fp16 safetensors + open_clip_config.json (``load_clip(folder)`` loads it as fp32) + train_info.json."""
    from ..clip import save_clip

    clip = as_clip(model, cfg)
    tie_unknown_rows(clip.model)
    was = clip.model.training
    folder = save_clip(clip, folder, cfg.model, dtype=torch.float16)
    clip.model.train(was)
    info = {"config": asdict(cfg), **({"history": state.history, "seconds": state.seconds} if state else {}),
            **(extra or {})}
    (Path(folder) / "train_info.json").write_text(json.dumps(info, indent=1))
    return Path(folder)


def train(cfg: WorldTrainConfig, log_every: int = 50) -> tuple[WorldTrainModel, TrainState]:
    """A whole single-process run (what a Ray Train worker does with rank 0 of 1)."""
    model = build_model(cfg)
    opt = build_optimiser(model, cfg)
    state = train_steps(model, opt, TrainState(), cfg, 0, cfg.total_steps, log_every=log_every)
    return model, state
