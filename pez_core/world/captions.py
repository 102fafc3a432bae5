"""Captions of a scene from several templates and synonyms, deterministic per rng; and short prompts."""

from __future__ import annotations

import random

from .grammar import (COLOURS, FILLS, SATURATION, SHAPES, SHARPNESS, SIZES, Obj,
                      Scene)

_POS_PHRASE = {"left": ["on the left", "at the left", "left"], "right": ["on the right", "at the right", "right"],
               "top": ["at the top", "on top", "top"], "bottom": ["at the bottom", "bottom"],
               "center": ["in the center", "in the middle", "centre", "center"]}
_REL_PHRASE = {"left of": ["left of", "to the left of"], "right of": ["right of", "to the right of"],
               "above": ["above", "over"], "below": ["below", "under", "beneath"]}


def _w(rng: random.Random, words: list[str], canonical: bool) -> str:
    return words[0] if canonical else rng.choice(words)


def _obj(o: Obj, rng: random.Random, canonical: bool, drop: float) -> str:
    parts = [] if rng.random() < drop else [_w(rng, SIZES[o.size], canonical)]
    parts += [] if rng.random() < drop else [_w(rng, COLOURS[o.colour], canonical)]
    return " ".join(parts + [_w(rng, SHAPES[o.shape], canonical)])


def style_words(s: Scene, rng: random.Random, canonical: bool, drop: float) -> list[str]:
    """The scene's fill, sharpness and saturation words: the canonical ones, or synonyms each left out with
    probability ``drop`` (as captions write them; ``prompts.expansion_prompt`` uses them too)."""
    if canonical:
        return [FILLS[s.fill][0], SHARPNESS[s.sharpness][0], SATURATION[s.saturation][0]]
    words = [] if rng.random() < drop else [rng.choice(FILLS[s.fill])]
    sharp = None if rng.random() < drop else rng.choice(SHARPNESS[s.sharpness])
    sat = None if rng.random() < drop else rng.choice(SATURATION[s.saturation])
    if sharp == "sharp" and sat is not None and sat != "dull" and s.saturation == "vivid" and rng.random() < 0.2:
        sharp, sat = "masterpiece", None  # a quality word standing for sharp + vivid
    elif s.sharpness == "sharp" and sharp and rng.random() < 0.15:
        sharp = rng.choice(["detailed", "hd"])
    words += [w for w in (sharp, sat) if w]
    rng.shuffle(words)
    return words


def caption(scene: Scene, rng: random.Random | None = None, drop: float = 0.0) -> str:
    """A caption of ``scene``; ``rng`` None gives the canonical one (first template, first synonyms).

    ``drop`` is the chance that each size / colour / style word is left out (an under-specified caption;
    the renderer draws a left-out attribute at random, so the caption stays true)."""
    canonical = rng is None
    rng = rng or random.Random(0)
    bg_drop = (not canonical) and rng.random() < drop
    bg = _w(rng, COLOURS[scene.background], canonical)
    bgw = "background" if canonical or rng.random() < 0.8 else "backdrop"
    styles = style_words(scene, rng, canonical, drop)
    st = ", ".join(styles) if canonical or rng.random() < 0.5 else " ".join(styles)
    if len(scene.objects) == 1:
        obj = _obj(scene.objects[0], rng, canonical, drop)
        pos = _POS_PHRASE[scene.position][0] if canonical else rng.choice(_POS_PHRASE[scene.position])
        pos = pos if canonical or rng.random() < 0.95 else ""
        templates = [f"a {obj} {pos}, {bg} {bgw}, {st}", f"{st} {obj} {pos} on a {bg} {bgw}",
                     f"{bg} {bgw} with a {obj} {pos}, {st}", f"a {obj}, {pos}, {st}, {bg} {bgw}"]
    else:
        a, b = (_obj(o, rng, canonical, drop) for o in scene.objects)
        rel = _REL_PHRASE[scene.relation][0] if canonical else rng.choice(_REL_PHRASE[scene.relation])
        templates = [f"a {a} {rel} a {b}, {bg} {bgw}, {st}", f"{st} {a} {rel} a {b} on a {bg} {bgw}",
                     f"{bg} {bgw} with a {a} {rel} a {b}, {st}"]
    text = templates[0] if canonical else rng.choice(templates)
    if bg_drop:
        text = text.replace(f"on a {bg} {bgw}", "").replace(f"{bg} {bgw} with", "").replace(f"{bg} {bgw}", "")
    return " ".join(text.replace(" ,", ",").replace(",,", ",").strip(" ,").split())


def short_prompt(scene: Scene, rng: random.Random) -> str:
    """An under-specified prompt such as "a star" or "a red star" (for rewriting)."""
    o = scene.objects[0]
    return rng.choice([f"a {o.shape}", f"a {o.colour} {o.shape}", f"a {o.size} {o.shape}"])
