"""Hard-negative captions for the world CLIP's contrastive loss: false captions as close to the true one as possible."""

from __future__ import annotations

import random
from dataclasses import replace

from .captions import caption
from .grammar import COLOURS, OBJECT_ATTRIBUTES, POSITIONS, RELATIONS, SCENE_ATTRIBUTES, SHAPES
from .parse import parse
from .zeroshot import alternatives

NEGATIVE_ATTRIBUTES = ("colour", "shape", "size", "position", "background", "fill", "sharpness", "saturation")


def hard_negative_captions(scene, positive: str, template, rng: random.Random, count: int,
                           drop: float, contradictions: float = 0.0, deletions: float = 0.0) -> list[str]:
    """``count`` false captions of ``scene``, each as close to its caption ``positive`` as
    possible (written from the positive's rng state ``template``, so the same template and synonyms):

    - three in four change one attribute (one object's colour, shape or size, the position or relation,
      the background, fill, sharpness or saturation): the zero-shot test's alternatives;
    - the others swap colours (the object's with the background's; the two objects' with each other):
      only the binding of colour words to what they colour tells these apart.
    One whose text equals the positive (its word was dropped) is retried, then left "" (masked out).

    The reading phase (docs/world.md) replaces a share of them by edits of the positive's own text that
    change what the renderer reads (:func:`reads_differently`): ``contradictions``, a word of another value,
    "X background" or (one object) a relation and a second shape inserted anywhere, so a prompt that names
    two colours for one thing, or says "above" where there is nothing above, is not as good as the caption;
    and ``deletions``, one named attribute word left out, so that leaving a word out is not safe either.
    Contradictions alone taught the CLIP to leave out what it was unsure of (PEZ then wrote fewer colour
    and size words); the deletions balance them. With both 0 no rng draw is added, so the
    first phase's batches are exactly the same as without them."""
    out = []
    for _ in range(count):
        if contradictions or deletions:
            r = rng.random()
            edit = (contradicted(scene, positive, rng) if r < contradictions else
                    deleted(positive, rng) if r < contradictions + deletions else "")
            if edit:
                out.append(edit)
                continue
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


# what a contradiction may insert a word of: every attribute but the shape and the background (inserted as
# "X background" and "a" + shape, below); in this order (colour, size, fill, sharpness, saturation, position)
_READ_TABLES = {k: t for k, t in {**OBJECT_ATTRIBUTES, **SCENE_ATTRIBUTES, "position": POSITIONS}.items()
                if k not in ("shape", "background")}
_READ_WORDS = frozenset(w for table in _READ_TABLES.values() for ws in table.values() for w in ws)


def reads_differently(a: str, b: str) -> bool:
    """Whether the renderer reads texts ``a`` and ``b`` as different scenes (``parse``: what each specifies)."""
    return parse(a) != parse(b)


def contradicted(scene, positive: str, rng: random.Random, tries: int = 6) -> str:
    """``positive`` with a word of another value of one attribute, "X background", or (one object) a relation
    and a second shape ("above a star") inserted at a random place, such that the renderer reads something
    else; "" if no try did."""
    words = positive.split()
    kinds = [*_READ_TABLES, "background"] + (["relation"] if len(scene.objects) == 1 else [])
    for _ in range(tries):
        kind = rng.choice(kinds)
        if kind == "background":
            inserted = [rng.choice([c for c in COLOURS if c != scene.background]), "background"]
        elif kind == "relation":  # a relation word brings in a second object: "... above a star"
            inserted = [rng.choice([w for ws in RELATIONS.values() for w in ws]), "a", rng.choice(list(SHAPES))]
        else:
            now = getattr(scene.objects[0], kind) if kind in ("colour", "size") else getattr(scene, kind, None)
            table = _READ_TABLES[kind]
            inserted = [rng.choice(table[rng.choice([v for v in table if v != now])])]
        i = rng.randint(0, len(words))
        text = " ".join(words[:i] + inserted + words[i:])
        if reads_differently(text, positive):
            return text
    return ""


def deleted(positive: str, rng: random.Random, tries: int = 4) -> str:
    """``positive`` with one of its attribute words (colour, size, style, position) left out, such that the
    renderer reads less; "" if no try did."""
    words = positive.split()
    named = [i for i, w in enumerate(words) if w.strip(",") in _READ_WORDS]
    rng.shuffle(named)
    for i in named[:tries]:
        text = " ".join(words[:i] + words[i + 1:]).replace(" ,", ",").strip(" ,")
        if reads_differently(text, positive):
            return text
    return ""
