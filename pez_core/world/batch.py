"""The world CLIP's training batches: step k's images, captions, hard negatives and head labels.

Every sample of step k is drawn from the string seed "{seed}:{k}:{i}" (i its index in the GLOBAL batch),
so a resumed run sees exactly the same data, and a worker of rank r out of w takes the slice
[r*b/w, (r+1)*b/w) of the same global batch. ``cfg`` is a train_clip.WorldTrainConfig.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from .captions import caption
from .grammar import (COLOURS, FILLS, OBJECT_ATTRIBUTES, POSITIONS, SATURATION, SCENE_ATTRIBUTES, SHAPES, SHARPNESS,
                      SIZES, WORDS, sample_scene)
from .negatives import hard_negative_captions
from .parse import parse
from .render import render_scene

MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip's OpenAI mean / std (its default preprocess)
STD = (0.26862954, 0.26130258, 0.27577711)


# ---- labels of the auxiliary heads ----------------------------------------------------------------
# layout: the 5 positions of one object, then "left of" / "above" for two (canonical order)
HEADS = {"layout": len(POSITIONS) + 2, "background": len(COLOURS), "fill": len(FILLS), "sharpness": len(SHARPNESS),
         "saturation": len(SATURATION), "shape1": len(SHAPES), "colour1": len(COLOURS), "size1": len(SIZES),
         "shape2": len(SHAPES), "colour2": len(COLOURS), "size2": len(SIZES)}
_INDEX = {k: list(t) for k, t in {"position": POSITIONS, **SCENE_ATTRIBUTES, **OBJECT_ATTRIBUTES}.items()}
IGNORE = -100


def _labels(scene) -> dict[str, int]:
    """Head labels of a Scene or a PartialScene (what a caption says; IGNORE where it says nothing)."""
    flip = {"right of": "left of", "below": "above"}
    objs = list(scene.objects)
    relation = scene.relation if len(objs) == 2 else None
    if relation in flip:
        objs, relation = objs[::-1], flip[relation]
    idx = lambda kind, v: IGNORE if v is None else _INDEX[kind].index(v)  # noqa: E731
    out = {k: idx(k, getattr(scene, k)) for k in ("background", "fill", "sharpness", "saturation")}
    if len(objs) == 2:
        out["layout"] = IGNORE if relation is None else len(POSITIONS) + ["left of", "above"].index(relation)
    else:
        out["layout"] = idx("position", scene.position)
    for j in (0, 1):
        o = objs[j] if j < len(objs) else None
        for k in ("shape", "colour", "size"):
            out[f"{k}{j + 1}"] = IGNORE if o is None else idx(k, getattr(o, k))
    return out


# ---- data ----------------------------------------------------------------------------------------
UNKNOWN_WORD = "unknown"  # the token whose embedding every non-world token shares (see tie_unknown_rows)


class WorldText:
    """Tokenizer, the ids the world knows (its words, glue words, start/end), and the unknown-token id."""

    def __init__(self):
        import open_clip

        self.tok = open_clip.get_tokenizer("ViT-B-32")
        world = {i for w in WORDS for i in self.tok.encode(w)}
        glue = {i for w in "a an the on in at of with and to side".split() for i in self.tok.encode(w)}
        specials = {self.tok.sot_token_id, self.tok.eot_token_id}
        vocab = self.tok.vocab_size if hasattr(self.tok, "vocab_size") else 49408
        self.filler_ids = np.array(sorted(set(range(vocab)) - world - glue - specials))
        self.known = torch.zeros(vocab, dtype=torch.bool)
        self.known[sorted(world | glue | specials)] = True
        [self.unknown_id] = self.tok.encode(UNKNOWN_WORD)

    tied = True  # filler is the unknown token (every non-world row equals it); see tie_unknown_rows

    def ids(self, texts: list[str], L: int, rng: random.Random, filler: float) -> torch.Tensor:
        out = torch.zeros(len(texts), L, dtype=torch.long)
        for r, t in enumerate(texts):
            ids = self.tok.encode(t)
            if filler and rng.random() < filler:
                for _ in range(rng.randint(1, 3)):
                    ids.insert(rng.randint(0, len(ids)), self.unknown_id if self.tied else
                               int(self.filler_ids[rng.randrange(len(self.filler_ids))]))
            ids = [self.tok.sot_token_id] + ids[: L - 2] + [self.tok.eot_token_id]
            out[r, : len(ids)] = torch.tensor(ids)
        return out


_WORLD_TEXT: WorldText | None = None


def world_text() -> WorldText:
    global _WORLD_TEXT
    if _WORLD_TEXT is None:
        _WORLD_TEXT = WorldText()
    return _WORLD_TEXT


def to_tensor(images) -> torch.Tensor:
    """PIL images -> normalised (b, 3, H, W), as open_clip's eval preprocess gives for images of its size."""
    x = torch.from_numpy(np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])) / 255
    x = x.permute(0, 3, 1, 2)
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def image_size(cfg) -> int:
    import open_clip

    from ..clip import _register_configs

    _register_configs()
    size = open_clip.get_model_config(cfg.model)["vision_cfg"]["image_size"]
    return size if isinstance(size, int) else size[0]


def make_batch(cfg, step: int, rank: int = 0, world_size: int = 1) -> dict:
    """Rank ``rank``'s slice of the global batch of ``step``: images, text ids, head labels, scenes."""
    if cfg.batch % world_size:
        raise ValueError(f"batch {cfg.batch} is not divisible by world_size {world_size}")
    per = cfg.batch // world_size
    size, text = image_size(cfg), world_text()
    reading = step >= cfg.steps  # the reading phase's negatives
    scenes, captions, images, rngs, negatives = [], [], [], [], []
    for i in range(rank * per, (rank + 1) * per):
        rng = random.Random(f"{cfg.seed}:{step}:{i}")
        scene = sample_scene(rng, cfg.two_objects)
        scenes.append(scene)
        template = rng.getstate()
        captions.append(caption(scene, rng, drop=cfg.drop))
        images.append(render_scene(scene, rng.randrange(1 << 30), size))
        negatives += hard_negative_captions(scene, captions[-1], template, rng, cfg.hard_negatives, cfg.drop,
                                            *((cfg.read_contradictions, cfg.read_deletions) if reading else ()))
        rngs.append(rng)
    ids = text.ids(captions, cfg.text_len, random.Random(f"{cfg.seed}:{step}:{rank}:filler"), cfg.filler)
    neg_ids = text.ids(negatives, cfg.text_len, random.Random(f"{cfg.seed}:{step}:{rank}:neg"), cfg.filler)
    neg_mask = torch.tensor([bool(t) for t in negatives], dtype=torch.bool)
    img_labels = [_labels(s) for s in scenes]
    txt_labels = [_labels(parse(c)) for c in captions]
    stack = lambda rows: {k: torch.tensor([r[k] for r in rows]) for k in HEADS}  # noqa: E731
    return {"images": to_tensor(images), "ids": ids, "negative_ids": neg_ids, "negative_mask": neg_mask,
            "image_labels": stack(img_labels),
            "text_labels": stack(txt_labels), "scenes": scenes, "captions": captions}
