"""What every evaluation and labelling actor does: quiet model loading, thumbnails for the report, and
isolating the record that fails a group."""

from __future__ import annotations

import io
import logging
from typing import Callable

log = logging.getLogger(__name__)

THUMB_PIXELS = 160  # longest side of the JPEG thumbnails kept in rows for the report


# ---- in actors ----------------------------------------------------------------------------------
def quiet_model_loading(threads: int) -> None:
    """Per actor: torch threads, and no per-load progress bars from diffusers/transformers in job logs."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    try:
        import diffusers.utils.logging as dl
        import transformers.utils.logging as tl

        dl.disable_progress_bar()
        tl.disable_progress_bar()
        dl.set_verbosity_error()
    except ImportError:  # pragma: no cover -- both are dependencies
        pass


def thumbnail(image, pixels: int = THUMB_PIXELS) -> bytes:
    """A small JPEG of a PIL image (what the report shows)."""
    im = image.copy()
    im.thumbnail((pixels, pixels))
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def isolate(run: Callable[[list], tuple[list, list]], records: list[dict], what: str) -> tuple[list, list]:
    """``run(records) -> (rows, rejects)``; if the group raises, run records one by one and reject the
    ones that still fail (so one bad prompt cannot fail a whole shard)."""
    try:
        return run(records)
    except Exception:  # noqa: BLE001 -- find the culprit(s)
        log.warning("a group of %d records failed to %s; retrying one by one", len(records), what, exc_info=True)
    rows, rejects = [], []
    for rec in records:
        try:
            r, j = run([rec])
            rows += r
            rejects += j
        except Exception as e:  # noqa: BLE001
            rejects.append({"key": rec["key"], "reason": f"cannot {what} ({type(e).__name__}: {str(e)[:200]})"})
    return rows, rejects
