"""Decode images with errors that name the input and say what is wrong."""

from __future__ import annotations

import io
import os

from PIL import Image, UnidentifiedImageError

MAX_PIXELS = 64_000_000  # larger images are refused (decompression bombs)


class ImageError(ValueError):
    """An input that is not a usable image; ``source`` names it, ``reason`` says why."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source, self.reason = source, reason


def decode_image(data: bytes, source: str = "<bytes>", max_pixels: int = MAX_PIXELS):
    """An RGB PIL image from encoded bytes; raises ImageError for empty, truncated, non-image or
    oversized data."""
    if not data:
        raise ImageError(source, "empty file")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ImageError(source, f"{w}x{h} pixels exceeds the limit of {max_pixels}")
            im.load()
            return im.convert("RGB")
    except ImageError:
        raise
    except UnidentifiedImageError as e:
        raise ImageError(source, "not an image (unrecognised format)") from e
    except Image.DecompressionBombError as e:
        raise ImageError(source, f"too many pixels ({e})") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(source, f"corrupt or truncated image ({e})") from e


def load_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS):
    """An RGB PIL image from a file; raises ImageError naming the file for every failure."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ImageError(path, "no such file")
    if os.path.isdir(path):
        raise ImageError(path, "is a directory, not an image file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ImageError(path, f"cannot read ({e.strerror or e})") from e
    return decode_image(data, path, max_pixels)
