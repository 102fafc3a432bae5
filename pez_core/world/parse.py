"""Any text -> the partial scene it specifies, by recognising the world's words (others are ignored)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .grammar import (BACKGROUND_WORDS, COLOURS, FILLS, POSITIONS, QUALITY, SATURATION, SHAPES, SHARPNESS,
                      SIZES, WORDS)


def _inverse(table: dict[str, list[str]]) -> dict[str, str]:
    return {w: value for value, ws in table.items() for w in ws}


_SHAPE, _COLOUR, _SIZE, _POS = _inverse(SHAPES), _inverse(COLOURS), _inverse(SIZES), _inverse(POSITIONS)
_FILL, _SHARP, _SAT = _inverse(FILLS), _inverse(SHARPNESS), _inverse(SATURATION)
_REL_WORDS = {"above": "above", "over": "above", "below": "below", "under": "below", "beneath": "below"}


@dataclass
class PartialObj:
    shape: str
    colour: str | None = None
    size: str | None = None


@dataclass
class PartialScene:
    """What a text says; None (or an empty list) where it says nothing."""

    objects: list[PartialObj] = field(default_factory=list)
    background: str | None = None
    fill: str | None = None
    sharpness: str | None = None
    saturation: str | None = None
    position: str | None = None
    relation: str | None = None  # between objects[0] and objects[1]


def _singular(w: str) -> str:
    if w in WORDS:
        return w
    for cut in ("es", "s"):
        if w.endswith(cut) and w[: -len(cut)] in WORDS:
            return w[: -len(cut)]
    return w


def words(text: str) -> list[str]:
    return [_singular(w) for w in re.findall(r"[a-z]+", text.lower())]


def parse(text: str) -> PartialScene:
    """Objects are shape words; a colour / size word belongs to the next shape (or, after the last one,
    to the last); a colour right before "background" is the background; "left of", "right of",
    "above", "below" (and synonyms) between two shapes are their relation; the first relation wins.

    As in every caption of the world, a second object exists only when a relation word introduces it:
    a shape word with no relation word since the previous object names that object again ("a red
    circle star", "a heart heart") and changes nothing but what it carries into an empty slot. So a
    bag of words, such as a hard prompt, draws one object, not a random pair. Of two colour words
    before a shape the nearer is the shape's and the other the background's ("blue, green heart"), and
    a colour an object cannot take (it has one) is the background's ("a red star, blue"), unless a
    colour before "background" named it."""
    ws = words(text)
    out = PartialScene()
    pending: dict[str, str] = {}
    for i, w in enumerate(ws):
        nxt = ws[i + 1] if i + 1 < len(ws) else ""
        if w in _COLOUR and nxt in BACKGROUND_WORDS:
            out.background = out.background or _COLOUR[w]
        elif w in _COLOUR or w in _SIZE:
            key, value = ("colour", _COLOUR[w]) if w in _COLOUR else ("size", _SIZE[w])
            if out.objects and i > 0 and ws[i - 1] in _SHAPE:  # right after a shape: that object's
                _attach_back(out, key, value)
            else:
                if key in pending:  # a second word for the slot: the nearer one goes to the next shape,
                    _attach_back(out, key, pending[key])  # the earlier to the last object or the background
                pending[key] = value
        elif w in _SHAPE:
            if not out.objects or (len(out.objects) == 1 and out.relation is not None):
                out.objects.append(PartialObj(_SHAPE[w], pending.get("colour"), pending.get("size")))
            else:  # no relation since the last object: the same object named again (its first shape wins)
                for key, value in pending.items():
                    _attach_back(out, key, value)
            pending = {}
        elif w in ("left", "right") and nxt == "of":
            if out.relation is None and len(out.objects) == 1:
                out.relation = f"{w} of"
        elif w == "top" and nxt == "of":
            if out.relation is None and len(out.objects) == 1:
                out.relation = "above"
        elif w in _REL_WORDS:
            if out.relation is None and len(out.objects) == 1:
                out.relation = _REL_WORDS[w]
        elif w in _POS:
            out.position = out.position or _POS[w]
        elif w in _FILL:
            out.fill = out.fill or _FILL[w]
        elif w in _SHARP:
            out.sharpness = out.sharpness or _SHARP[w]
        elif w in _SAT:
            out.saturation = out.saturation or _SAT[w]
        if w in QUALITY:
            for k, v in QUALITY[w].items():
                setattr(out, k, getattr(out, k) or v)
    for key, value in pending.items():  # colour / size words after the last shape
        _attach_back(out, key, value)
    if len(out.objects) < 2:
        out.relation = None
    return out


def _attach_back(out: PartialScene, key: str, value: str) -> None:
    """A colour / size word for the last object; a colour it cannot take (it has another) is the
    background's when nothing else named the background ("a red star, blue" is a red star on blue)."""
    if out.objects and getattr(out.objects[-1], key) is None:
        setattr(out.objects[-1], key, value)
    elif key == "colour" and out.background is None and value not in {o.colour for o in out.objects}:
        out.background = value  # also a colour named before any object, when another follows it
