"""PEZ (Wen et al., NeurIPS 2023): hard prompts by projected gradient descent, many targets at once.

Shapes: b targets, a active targets, n prompt tokens, d text width, k feature vectors per target
(several images share one prompt), e joint embedding width.

Per step, for all active targets together: project the continuous prompts P onto the nearest
candidate tokens, run ONE forward of the text encoder on the projected embeddings, take the loss
1 - mean cos(f(P'), target) and ONE backward to the projected embeddings, and apply that gradient to
P with AdamW (straight-through). The forward that gives the gradient also scores the hard prompt, so
there is no second scoring pass. Every target keeps its own prompt, optimiser state, step count,
best-so-far and early stop (stopping.py); AdamW is element-wise, so a target's trajectory does not
depend on the others in its batch. The loop itself is stream.py (continuous batching).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from .clip import ClipModel
from .projection import Vocabulary

log = logging.getLogger(__name__)

# the default plateau rule, calibrated by bench/pez_time_to_quality.py (README: "When PEZ stops")
PLATEAU_PATIENCE = 800
PLATEAU_RATIO = 0.5


# PEZConfig.method: where the projection sits (PEZ paper, Table 1 baselines). Every method takes the
# same AdamW step (lr, weight decay) from the same initial prompt, so a comparison isolates that choice.
METHODS = {
    "pez": "project before the forward, gradient at the projected prompt, update the continuous prompt",
    "autoprompt-sgd": "gradient at the (always hard) prompt, update, then replace it by its projection",
    "fluentprompt": "as autoprompt-sgd with Gaussian (Langevin) noise added to each update before projecting",
    "soft": "no projection at all: a soft prompt, which carries no text (result.text is empty)",
}


@dataclass
class PEZConfig:
    prompt_len: int = 16  # tokens in the hard prompt; the paper finds 16 transfers best (1..75)
    steps: int = 3000  # the budget: the most steps a target runs (>= 1); early_stop ends most sooner
    lr: float = 0.1  # AdamW learning rate on the continuous prompt (paper: 0.1)
    weight_decay: float = 0.1  # AdamW decoupled weight decay (paper: 0.1)
    seed: int = 0  # a target without its own seed uses seed + its index in the batch
    early_stop: bool = True  # the plateau rule (stopping.py); False: every target runs `steps` (the paper)
    plateau_patience: int = PLATEAU_PATIENCE  # the plateau rule waits at least this many steps (>= 1)
    plateau_ratio: float = PLATEAU_RATIO  # ... and this times the step of the best (>= 0)
    patience: int | None = None  # also stop a target after this many steps without a better prompt
    target_cosine: float | None = None  # also stop a target once its best cosine reaches this (-1..1)
    safe_vocab: bool = True  # only round-trip-safe whole-word tokens (see projection.py)
    ban: tuple[str, ...] = ()  # banned whole words: no token whose word is one (any case) is a candidate
    ban_substring: tuple[str, ...] = ()  # banned substrings: no token containing one (safety filters)
    allow: tuple[str, ...] | None = None  # keyword bank: only tokens of these words are candidates
    projection: Literal["exact", "fast"] = "fast"  # fast = bf16 ranking + exact fp32 re-rank
    method: Literal["pez", "autoprompt-sgd", "fluentprompt", "soft"] = "pez"  # the paper's baselines: METHODS
    langevin_noise: float = 0.5  # fluentprompt: noise std in units of the token table's std, annealed to 0
    fluency: float = 0.0  # weight of the prompt's mean NLL (nats/token) under prompt_lm; 0: the paper's PEZ
    prompt_lm: str | None = None  # the fluency prior: a prompt LM preset ("world") or folder (prompt_lm.py)
    polish_sweeps: int = 3  # with fluency > 0: sweeps of discrete coordinate ascent on each finished prompt
    #   under the same objective, proposals from prompt_lm (polish.py); 0: off (the paper's methods)
    polish_proposals: int = 8  # the prompt LM's likeliest tokens tried at each position per sweep
    # the lr over a target's OWN steps (lr_factor): warm-up, then constant (the paper), cosine or step decay
    lr_schedule: Literal["constant", "cosine", "step"] = "constant"
    lr_warmup: int = 0  # own steps of linear warm-up from lr / lr_warmup to lr
    lr_final: float = 0.0  # cosine: the lr at the horizon, as a share of lr; step: two drops of sqrt(lr_final)
    lr_horizon: int | None = None  # own step at which the decay ends (None: steps, the budget)
    restart_patience: int | None = None  # re-seed a target in place (keeping its best) once its current run
    #   has gone this many steps without beating that run's own best; None: never (the paper)

    def __post_init__(self):
        if not 1 <= self.prompt_len <= 75:
            raise ValueError(f"prompt_len must be in 1..75 (CLIP's context minus start/end), got {self.prompt_len}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not self.fluency >= 0:
            raise ValueError(f"fluency must be >= 0, got {self.fluency}")
        if self.fluency and not self.prompt_lm:
            raise ValueError("fluency > 0 needs prompt_lm: a prompt LM preset (world) or a folder written by "
                             "`promptmine train prompt-lm`")
        if self.fluency and self.method == "soft":
            raise ValueError("fluency needs tokens to score; method 'soft' has none")
        if self.polish_sweeps < 0:
            raise ValueError(f"polish_sweeps must be >= 0, got {self.polish_sweeps}")
        if self.polish_proposals < 1:
            raise ValueError(f"polish_proposals must be >= 1, got {self.polish_proposals}")
        if not self.langevin_noise >= 0:
            raise ValueError(f"langevin_noise must be >= 0, got {self.langevin_noise}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.plateau_patience < 1:
            raise ValueError(f"plateau_patience must be >= 1, got {self.plateau_patience}")
        if not self.plateau_ratio >= 0:
            raise ValueError(f"plateau_ratio must be >= 0, got {self.plateau_ratio}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 or None, got {self.patience}")
        if self.lr_schedule not in ("constant", "cosine", "step"):
            raise ValueError(f"lr_schedule must be constant, cosine or step, got {self.lr_schedule!r}")
        if self.lr_warmup < 0:
            raise ValueError(f"lr_warmup must be >= 0, got {self.lr_warmup}")
        if not 0 <= self.lr_final <= 1 or (self.lr_schedule == "step" and self.lr_final == 0):
            raise ValueError(f"lr_final must be in [0, 1] (step: > 0), got {self.lr_final}")
        if self.lr_horizon is not None and self.lr_horizon <= self.lr_warmup:
            raise ValueError(f"lr_horizon must be > lr_warmup or None, got {self.lr_horizon}")
        if self.restart_patience is not None and self.restart_patience < 1:
            raise ValueError(f"restart_patience must be >= 1 or None, got {self.restart_patience}")
        if self.target_cosine is not None and not -1 <= self.target_cosine <= 1:
            raise ValueError(f"target_cosine must be in [-1, 1], got {self.target_cosine}")
        self.ban, self.ban_substring = tuple(self.ban), tuple(self.ban_substring)
        self.allow = tuple(self.allow) if self.allow is not None else None


@dataclass
class Target:
    """What one prompt is optimised toward: normalised feature vectors (k, e), loss averaged over k."""

    features: torch.Tensor
    kind: str  # image | images | text | features
    seed: int | None = None


@dataclass
class PEZResult:
    text: str  # the hard prompt; tokenises back to token_ids
    token_ids: list[int]
    cosine: float  # best mean cosine to the target, of the returned prompt
    best_step: int  # step at which it was reached (0-based)
    steps_run: int  # steps this target ran (fewer than configured after an early stop)
    kind: str = "image"
    extra: dict = field(default_factory=dict)


# ---- targets ---------------------------------------------------------------------------------
def image_target(clip: ClipModel, images: Sequence, seed: int | None = None) -> Target:
    """One prompt for one or several PIL images (several: a shared style, loss averaged)."""
    if not images:
        raise ValueError("an image target needs at least one image")
    return Target(clip.encode_images(images), "image" if len(images) == 1 else "images", seed)


def text_target(clip: ClipModel, text: str, seed: int | None = None) -> Target:
    """Distillation: a short prompt toward the features of a (long) prompt."""
    if not text.strip():
        raise ValueError("a text target needs a non-empty text")
    return Target(clip.encode_texts([text]), "text", seed)


def feature_target(features: torch.Tensor, seed: int | None = None) -> Target:
    """A precomputed feature vector (e,) or set of vectors (k, e)."""
    f = torch.as_tensor(features, dtype=torch.float32)
    f = f.unsqueeze(0) if f.dim() == 1 else f
    if f.dim() != 2 or not torch.isfinite(f).all() or (f.norm(dim=-1) == 0).any():
        raise ValueError(f"features must be finite, non-zero, of shape (e,) or (k, e); got {tuple(f.shape)}")
    return Target(F.normalize(f, dim=-1), "features", seed)


def stack_targets(targets: Sequence[Target], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad target feature sets into (b, k, e) with averaging weights (b, k) that sum to one."""
    kmax = max(t.features.shape[0] for t in targets)
    e = targets[0].features.shape[1]
    feats = torch.zeros(len(targets), kmax, e, device=device)
    weights = torch.zeros(len(targets), kmax, device=device)
    for i, t in enumerate(targets):
        if t.features.shape[1] != e:
            raise ValueError(f"target {i} has features of width {t.features.shape[1]}, expected {e}")
        k = t.features.shape[0]
        feats[i, :k] = t.features.to(device)
        weights[i, :k] = 1.0 / k
    return feats, weights


def similarity(text_features: torch.Tensor, feats: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean cosine (b,) of unnormalised text features (b, e) to each target's feature set."""
    t = F.normalize(text_features, dim=-1)
    return (torch.einsum("be,bke->bk", t, feats) * weights).sum(dim=1)


def initial_prompts(vocab: Vocabulary, seeds: Sequence[int], n: int) -> torch.Tensor:
    """Continuous prompts (b, n, d) started at random candidate tokens, one generator per target."""
    ids = torch.stack([vocab.random_ids(n, torch.Generator().manual_seed(s)) for s in seeds])
    return vocab.clip.token_embedding.detach()[ids].float().clone()


def target_seeds(targets: Sequence[Target], seed: int) -> list[int]:
    return [t.seed if t.seed is not None else seed + i for i, t in enumerate(targets)]


# ---- the batched loop ------------------------------------------------------------------------
def lr_factor(cfg: PEZConfig, t: torch.Tensor) -> torch.Tensor | None:
    """The lr multiplier (a,) float64 at each target's own 1-based step ``t`` (a,); None for a constant lr."""
    if cfg.lr_schedule == "constant" and not cfg.lr_warmup:
        return None
    t = t.to(torch.float64)
    f = torch.ones_like(t)
    if cfg.lr_warmup:
        f = torch.clamp(t / cfg.lr_warmup, max=1.0)
    horizon = cfg.lr_horizon or cfg.steps
    progress = torch.clamp((t - 1 - cfg.lr_warmup) / max(1, horizon - cfg.lr_warmup), 0.0, 1.0)
    if cfg.lr_schedule == "cosine":
        f = f * (cfg.lr_final + (1 - cfg.lr_final) * 0.5 * (1 + torch.cos(math.pi * progress)))
    elif cfg.lr_schedule == "step":  # x sqrt(lr_final) at half the horizon, again at three quarters
        f = f * torch.pow(math.sqrt(cfg.lr_final), (progress >= 0.5).double() + (progress >= 0.75).double())
    return f


class _AdamW:
    """torch.optim.AdamW's update on rows of one tensor, so finished targets can leave the batch."""

    def __init__(self, param: torch.Tensor, lr: float, weight_decay: float, betas=(0.9, 0.999), eps=1e-8):
        self.p, self.lr, self.wd, self.betas, self.eps = param, lr, weight_decay, betas, eps
        self.m = torch.zeros_like(param)
        self.v = torch.zeros_like(param)

    @torch.no_grad()
    def step(self, rows: torch.Tensor, grad: torch.Tensor, t: int | torch.Tensor,
             factor: torch.Tensor | None = None) -> None:
        """Update ``rows`` (a,) with ``grad`` (a, ...); ``t`` is each row's own 1-based step count (a,)
        (or one count for all), used by the bias correction; ``factor`` (a,) scales each row's lr (a schedule)."""
        b1, b2 = self.betas
        if factor is not None and not isinstance(t, torch.Tensor):
            t = torch.full((len(rows),), t)
        p, m, v = self.p[rows], self.m[rows], self.v[rows]
        shape = (-1, *([1] * (p.dim() - 1)))
        lr = self.lr if factor is None else (self.lr * factor.to(torch.float64)).view(shape)
        p.mul_((1 - lr * self.wd).float() if factor is not None else 1 - lr * self.wd)
        m.lerp_(grad, 1 - b1)
        v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        if isinstance(t, torch.Tensor):  # per row; the corrections in float64, as torch's scalar path
            t = t.to(torch.float64).view(shape)
            denom = (v / (1 - b2**t).float()).sqrt_().add_(self.eps)
            p.addcdiv_(m * (-lr / (1 - b1**t)).float(), denom)
        else:
            denom = (v / (1 - b2**t)).sqrt_().add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / (1 - b1**t))
        self.p[rows], self.m[rows], self.v[rows] = p, m, v


def invert(
    clip: ClipModel,
    targets: Sequence[Target],
    config: PEZConfig | None = None,
    vocab: Vocabulary | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> list[PEZResult]:
    """Optimise one hard prompt per target, all targets in one batch (``stream.invert_stream`` with a
    slot per target). ``on_step(step, active)`` is called after every step (for progress bars)."""
    from .stream import invert_stream

    if not targets:
        return []
    out: list[PEZResult | None] = [None] * len(targets)
    for index, result in invert_stream(clip, targets, config, slots=len(targets), vocab=vocab, on_step=on_step):
        out[index] = result
    return out


def _result(clip, target: Target, ids: list[int], cos: float, best_step: int, steps_run: int,
            feats: torch.Tensor, weights: torch.Tensor) -> PEZResult:
    """Decode a best prompt and guarantee the round trip: text that re-tokenises to other ids
    (possible only outside the safe vocabulary) is reported with those ids and re-scored."""
    text = clip.decode(ids)
    extra = {}
    back = clip.tokenize(text)
    if back == ids:
        text = tidy_punctuation(clip, text, ids)
    else:
        extra = {"optimised_ids": ids, "optimised_cosine": cos}
        ids = back[: clip.context_length - 2]
        rescored = clip.encode_ids(torch.tensor([ids], device=clip.device))
        cos = float((torch.einsum("e,ke->k", rescored[0], feats) * weights).sum())
    if hasattr(clip, "encoder_cosines"):  # several text encoders at once (joint.py): each one's score
        extra["encoders"] = clip.encoder_cosines(ids, feats, weights)
    return PEZResult(text, ids, cos, best_step, steps_run, target.kind, extra)


_LOOSE_MARK = re.compile(r"(?<=\w) ([,.;:!?])(?= |$)")  # a mark the decoder set apart: "red , circle"


def tidy_punctuation(clip, text: str, ids: list[int]) -> str:
    """``text`` with each lone , . ; : ! ? after a word attached to it ("red, circle"), as a person writes
    it, when that still tokenises to ``ids`` (the round trip holds); else ``text`` unchanged."""
    tidy = _LOOSE_MARK.sub(r"\1", text)
    return tidy if tidy != text and clip.tokenize(tidy) == ids else text


def concat_prompts(prompts: Sequence[str | PEZResult], tokenizer=None, sep: str = " ", max_tokens: int = 75) -> str:
    """Join learned prompts (e.g. a style prompt and a content prompt) into one, checking that the
    result still fits CLIP's context (``max_tokens`` between start and end; 75 for every CLIP here).
    ``tokenizer`` defaults to open_clip's CLIP BPE tokenizer, which all presets share."""
    texts = [p.text if isinstance(p, PEZResult) else str(p) for p in prompts]
    joined = sep.join(t.strip() for t in texts if t.strip())
    if not joined:
        raise ValueError("nothing to concatenate: every prompt is empty")
    if tokenizer is None:
        import open_clip

        tokenizer = open_clip.get_tokenizer("ViT-L-14")
    n = len(tokenizer.encode(joined))
    if n > max_tokens:
        raise ValueError(f"concatenated prompt has {n} tokens; CLIP reads at most {max_tokens}")
    return joined
