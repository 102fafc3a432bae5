"""Synthetic sample images for demos and tests: drawn offline, deterministic per seed."""

from __future__ import annotations

import random
from pathlib import Path


def make_sample_image(seed: int, size: int = 224):
    """A PIL RGB image of random coloured shapes on a gradient, the same for the same seed."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    top = tuple(rng.randrange(256) for _ in range(3))
    bottom = tuple(rng.randrange(256) for _ in range(3))
    im = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(im)
    for y in range(size):
        a = y / (size - 1)
        draw.line([(0, y), (size, y)], fill=tuple(int(t * (1 - a) + b * a) for t, b in zip(top, bottom)))
    for _ in range(rng.randint(2, 6)):
        x0, y0 = rng.randrange(size), rng.randrange(size)
        x1, y1 = x0 + rng.randint(10, size // 2), y0 + rng.randint(10, size // 2)
        colour = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
    return im


def write_sample_images(folder: str | Path, count: int, seed: int = 0, size: int = 224) -> list[Path]:
    """Write ``count`` PNG sample images to ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"sample_{i:03d}.png"
        make_sample_image(seed + i, size).save(path)
        paths.append(path)
    return paths
