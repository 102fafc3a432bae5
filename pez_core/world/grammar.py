"""The world's attributes, their words (each a single CLIP token) and the Scene a caption describes."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

# attribute value -> its words (the first is the canonical one used in evaluation captions)
SHAPES = {"circle": ["circle", "disc"], "square": ["square"], "triangle": ["triangle"], "star": ["star"],
          "cross": ["cross"], "heart": ["heart"], "diamond": ["diamond"]}
COLOURS = {c: [c] for c in ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]}
COLOURS["purple"].append("violet")
SIZES = {"small": ["small", "little", "tiny"], "large": ["large", "big", "huge"]}
POSITIONS = {"left": ["left"], "right": ["right"], "top": ["top", "upper"], "bottom": ["bottom", "lower"],
             "center": ["center", "centre", "middle"]}
# A relation "A <rel> B" between two objects; the words before "of" are matched as phrases by parse
RELATIONS = {"left of": ["left of"], "right of": ["right of"], "above": ["above", "over"],
             "below": ["below", "under", "beneath"]}
FILLS = {"filled": ["filled", "solid"], "outlined": ["outline", "hollow"], "striped": ["striped"]}
SHARPNESS = {"sharp": ["sharp", "crisp"], "blurry": ["blurry", "blurred", "fuzzy"]}
SATURATION = {"vivid": ["vivid", "vibrant", "colorful"], "dull": ["dull", "faded", "muted"]}
# quality words: no attribute of their own, they set visible effects (used by the rewriting stage)
QUALITY = {"masterpiece": {"sharpness": "sharp", "saturation": "vivid"},
           "detailed": {"sharpness": "sharp"}, "hd": {"sharpness": "sharp"},
           "beautiful": {"saturation": "vivid"}}
BACKGROUND_WORDS = ["background", "backdrop"]

SCENE_ATTRIBUTES = {"background": COLOURS, "fill": FILLS, "sharpness": SHARPNESS, "saturation": SATURATION}
OBJECT_ATTRIBUTES = {"shape": SHAPES, "colour": COLOURS, "size": SIZES}


def _all_words() -> set[str]:
    words = set(BACKGROUND_WORDS) | set(QUALITY) | {"of"}
    for table in (SHAPES, COLOURS, SIZES, POSITIONS, FILLS, SHARPNESS, SATURATION):
        for ws in table.values():
            words.update(ws)
    for ws in RELATIONS.values():
        for w in ws:
            words.update(w.split())
    return words


WORDS = frozenset(_all_words())  # every content / style / quality word of the world
FUNCTION_WORDS = frozenset("a an the on in at of with and to side".split())  # harmless glue words


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str


@dataclass(frozen=True)
class Scene:
    """One or two objects; with one a position, with two the relation "objects[0] <relation> objects[1]"."""

    objects: tuple[Obj, ...]
    background: str
    fill: str = "filled"
    sharpness: str = "sharp"
    saturation: str = "vivid"
    position: str | None = None  # one object only
    relation: str | None = None  # two objects only

    def __post_init__(self):
        if len(self.objects) == 1 and (self.position not in POSITIONS or self.relation is not None):
            raise ValueError(f"a one-object scene needs a position in {list(POSITIONS)}, got {self.position!r}")
        if len(self.objects) == 2 and (self.relation not in RELATIONS or self.position is not None):
            raise ValueError(f"a two-object scene needs a relation in {list(RELATIONS)}, got {self.relation!r}")
        if len(self.objects) not in (1, 2):
            raise ValueError(f"a scene has one or two objects, got {len(self.objects)}")

    def canonical(self) -> "Scene":
        """The same picture with the relation 'left of' / 'above' (objects swapped if needed)."""
        flip = {"right of": "left of", "below": "above"}
        if self.relation in flip:
            return replace(self, objects=self.objects[::-1], relation=flip[self.relation])
        return self


def sample_scene(rng: random.Random, two_objects: float = 0.3) -> Scene:
    """A random scene; objects' colours differ from the background (and from each other)."""
    n = 2 if rng.random() < two_objects else 1
    background = rng.choice(list(COLOURS))
    colours = rng.sample([c for c in COLOURS if c != background], n)
    objects = tuple(Obj(rng.choice(list(SHAPES)), c, rng.choice(list(SIZES))) for c in colours)
    return Scene(objects=objects, background=background, fill=rng.choice(list(FILLS)),
                 sharpness=rng.choice(list(SHARPNESS)), saturation=rng.choice(list(SATURATION)),
                 position=rng.choice(list(POSITIONS)) if n == 1 else None,
                 relation=rng.choice(list(RELATIONS)) if n == 2 else None)
