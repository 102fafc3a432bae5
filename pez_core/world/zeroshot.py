"""Zero-shot accuracy per attribute: the true caption against captions that differ only in that attribute."""

from __future__ import annotations

import random
from dataclasses import replace

import torch

from .captions import caption
from .grammar import COLOURS, FILLS, POSITIONS, SATURATION, SHAPES, SHARPNESS, SIZES, sample_scene
from .render import render_scene

HELD_OUT = "heldout"  # scene seeds are "heldout:{i}": a stream disjoint from training's "{seed}:{step}:{i}"
_OBJECT = {"colour": COLOURS, "shape": SHAPES, "size": SIZES}
_SCENE = {"position": POSITIONS, "background": COLOURS, "fill": FILLS, "sharpness": SHARPNESS,
          "saturation": SATURATION}
ATTRIBUTES = [*_OBJECT, *_SCENE, "relation"]


def alternatives(scene, attribute: str) -> list:
    """Scenes that differ from ``scene`` only in ``attribute`` (every other value; for the relation the
    swapped relation and the swapped objects)."""
    if attribute in _OBJECT:
        o = scene.objects[0]
        return [replace(scene, objects=(replace(o, **{attribute: v}),) + scene.objects[1:])
                for v in _OBJECT[attribute] if v != getattr(o, attribute)]
    if attribute in _SCENE:
        return [replace(scene, **{attribute: v}) for v in _SCENE[attribute] if v != getattr(scene, attribute)]
    if attribute == "relation":
        swap = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
        return [replace(scene, relation=swap[scene.relation]), replace(scene, objects=scene.objects[::-1])]
    raise ValueError(f"unknown attribute {attribute!r}; choose from {ATTRIBUTES}")


@torch.no_grad()
def zero_shot(clip, n: int = 200, attributes=ATTRIBUTES, size: int | None = None) -> dict[str, float]:
    """Accuracy per attribute over ``n`` held-out scenes (one-object scenes, two-object for the relation):
    the true canonical caption must score strictly above every alternative's."""
    size = size or clip.image_size
    scenes1 = [sample_scene(random.Random(f"{HELD_OUT}:1:{i}"), two_objects=0.0) for i in range(n)]
    scenes2 = [sample_scene(random.Random(f"{HELD_OUT}:2:{i}"), two_objects=1.0) for i in range(n)]
    feats = {}
    for key, scenes in (("1", scenes1), ("2", scenes2)):
        if key == "2" and "relation" not in attributes or key == "1" and attributes == ["relation"]:
            continue
        feats[key] = clip.encode_images([render_scene(s, 10_000 + i, size) for i, s in enumerate(scenes)])
    out = {}
    for attr in attributes:
        key = "2" if attr == "relation" else "1"
        scenes = scenes2 if key == "2" else scenes1
        hits = 0
        for i, s in enumerate(scenes):
            texts = [caption(s)] + [caption(a) for a in alternatives(s, attr)]
            sims = clip.encode_texts(texts) @ feats[key][i]
            hits += int(bool((sims[0] > sims[1:]).all()))
        out[attr] = hits / len(scenes)
    return out
