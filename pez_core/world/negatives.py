"""Hard-negative captions for the world CLIP's contrastive loss: false captions as close to the true one as possible."""

from __future__ import annotations

import random
from dataclasses import replace

from .captions import caption
from .zeroshot import alternatives

NEGATIVE_ATTRIBUTES = ("colour", "shape", "size", "position", "background", "fill", "sharpness", "saturation")


def hard_negative_captions(scene, positive: str, template, rng: random.Random, count: int,
                           drop: float) -> list[str]:
    """``count`` false captions of ``scene``, each as close to its caption ``positive`` as
    possible (written from the positive's rng state ``template``, so the same template and synonyms):

    - three in four change one attribute (one object's colour, shape or size, the position or relation,
      the background, fill, sharpness or saturation): the zero-shot test's alternatives;
    - the others swap colours (the object's with the background's; the two objects' with each other):
      only the binding of colour words to what they colour tells these apart.
    One whose text equals the positive (its word was dropped) is retried, then left "" (masked out).
    (Negatives that insert a contradicting word were tried too: PEZ then filled its prompts with the
    no-op token instead of content words, and regenerated images got worse; docs/world.md.)"""
    out = []
    for _ in range(count):
        text = ""
        for _ in range(4):
            alt = _swapped(scene) if rng.random() < 0.25 else _one_changed(scene, rng)
            writer = random.Random()
            writer.setstate(template)
            text = caption(alt, writer, drop=drop)
            if text != positive:
                break
            text = ""
        out.append(text)
    return out


def _one_changed(scene, rng: random.Random):
    two = len(scene.objects) == 2
    attr = rng.choice([a for a in NEGATIVE_ATTRIBUTES if not (two and a == "position")] + (["relation"] if two else []))
    if attr in ("colour", "shape", "size") and two and rng.random() < 0.5:  # change the second object
        flipped = replace(scene, objects=scene.objects[::-1])
        return replace(scene, objects=rng.choice(alternatives(flipped, attr)).objects[::-1])
    return rng.choice(alternatives(scene, attr))


def _swapped(scene):
    a = scene.objects[0]
    if len(scene.objects) == 2:
        b = scene.objects[1]
        return replace(scene, objects=(replace(a, colour=b.colour), replace(b, colour=a.colour)))
    return replace(scene, background=a.colour, objects=(replace(a, colour=scene.background),))
