"""Draw a scene (or any prompt, through parse) with PIL, deterministic per (prompt, seed)."""

from __future__ import annotations

import math
import random
from functools import lru_cache

from PIL import Image, ImageChops, ImageDraw, ImageEnhance, ImageFilter

from .grammar import COLOURS, FILLS, POSITIONS, RELATIONS, SATURATION, SHAPES, SHARPNESS, SIZES, Obj, Scene
from .parse import PartialScene, parse

RGB = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (240, 220, 30),
       "purple": (140, 40, 180), "orange": (250, 140, 20), "white": (245, 245, 245), "black": (15, 15, 15)}
_CENTRES = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75),
            "center": (0.5, 0.5)}
_RADIUS = {"small": 0.13, "large": 0.22}  # of the image size; two-object scenes use 0.85 of it


def complete(p: PartialScene, rng: random.Random) -> Scene:
    """Fill what ``p`` leaves open at random (objects' colours apart from the background)."""
    objs = p.objects[:2] or []
    n = len(objs) or 1
    background = p.background or rng.choice([c for c in COLOURS if c not in {o.colour for o in objs}])
    taken, out = {background}, []
    for i in range(n):
        o = objs[i] if objs else None
        colour = (o and o.colour) or rng.choice([c for c in COLOURS if c not in taken] or list(COLOURS))
        taken.add(colour)
        out.append(Obj((o and o.shape) or rng.choice(list(SHAPES)), colour, (o and o.size) or rng.choice(list(SIZES))))
    return Scene(objects=tuple(out), background=background, fill=p.fill or rng.choice(list(FILLS)),
                 sharpness=p.sharpness or rng.choice(list(SHARPNESS)),
                 saturation=p.saturation or rng.choice(list(SATURATION)),
                 position=(p.position or rng.choice(list(POSITIONS))) if n == 1 else None,
                 relation=(p.relation or rng.choice(list(RELATIONS))) if n == 2 else None)


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)]
    if shape == "star":
        return [(cx + (r if k % 2 == 0 else 0.42 * r) * math.cos(-math.pi / 2 + k * math.pi / 5),
                 cy + (r if k % 2 == 0 else 0.42 * r) * math.sin(-math.pi / 2 + k * math.pi / 5)) for k in range(10)]
    if shape == "cross":
        t = 0.33 * r
        pts = [(-t, -r), (t, -r), (t, -t), (r, -t), (r, t), (t, t), (t, r), (-t, r), (-t, t), (-r, t), (-r, -t), (-t, -t)]
        return [(cx + x, cy + y) for x, y in pts]
    if shape == "heart":
        pts = []
        for k in range(24):
            a = 2 * math.pi * k / 24
            x = 16 * math.sin(a) ** 3
            y = -(13 * math.cos(a) - 5 * math.cos(2 * a) - 2 * math.cos(3 * a) - math.cos(4 * a))
            pts.append((cx + r * x / 16, cy + r * (y + 2) / 16))
        return pts
    raise ValueError(f"no polygon for shape {shape!r}")


def _mask(shape: str, cx: float, cy: float, r: float, size: int) -> Image.Image:
    m = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(m)
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif shape == "square":
        s = 0.85 * r
        d.rectangle([cx - s, cy - s, cx + s, cy + s], fill=255)
    else:
        d.polygon(_polygon(shape, cx, cy, r), fill=255)
    return m


@lru_cache(maxsize=8)
def _stripes(size: int) -> Image.Image:
    period = max(3, size // 16)
    m = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(m)
    for y in range(0, size, period):
        d.rectangle([0, y, size, y + period // 2 - 1], fill=255)
    return m


def _draw(img: Image.Image, o: Obj, fill: str, cx: float, cy: float, r: float) -> None:
    size = img.size[0]
    m = _mask(o.shape, cx, cy, r, size)
    if fill in ("outlined", "striped"):
        k = 2 * max(1, round(size / 40)) + 1
        inner = m.filter(ImageFilter.MinFilter(k))
        outline = ImageChops.subtract(m, inner)
        m = outline if fill == "outlined" else ImageChops.lighter(outline, ImageChops.multiply(inner, _stripes(size)))
    img.paste(RGB[o.colour], mask=m)


def render_scene(scene: Scene, seed: int = 0, size: int = 64) -> Image.Image:
    """The picture of ``scene``; ``seed`` jitters positions (a few pixels) and sizes (about 10%)."""
    rng = random.Random(f"jitter:{seed}")
    img = Image.new("RGB", (size, size), RGB[scene.background])
    j = lambda: rng.uniform(-0.05, 0.05) * size  # noqa: E731
    if len(scene.objects) == 1:
        (o,) = scene.objects
        fx, fy = _CENTRES[scene.position]
        _draw(img, o, scene.fill, fx * size + j(), fy * size + j(), _RADIUS[o.size] * size * rng.uniform(0.9, 1.1))
    else:
        s = scene.canonical()  # objects[0] left of / above objects[1]
        across, along = rng.uniform(0.22, 0.3), 0.5 + rng.uniform(-0.08, 0.08)
        for o, t in zip(s.objects, (across, 1 - across)):
            x, y = (t, along) if s.relation == "left of" else (along, t)
            _draw(img, o, s.fill, x * size + j() / 2, y * size + j() / 2,
                  0.85 * _RADIUS[o.size] * size * rng.uniform(0.9, 1.1))
    if scene.saturation == "dull":
        img = ImageEnhance.Contrast(ImageEnhance.Color(img).enhance(0.5)).enhance(0.8)
    if scene.sharpness == "blurry":
        img = img.filter(ImageFilter.GaussianBlur(size / 40))
    return img


def render(prompt: str, seed: int = 0, size: int = 64) -> Image.Image:
    """Parse ``prompt``, fill what it leaves open at random from ``seed``, draw it (unknown words ignored)."""
    scene = complete(parse(prompt), random.Random(f"fill:{seed}"))
    return render_scene(scene, seed, size)
