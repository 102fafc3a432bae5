"""promptmine's algorithms in plain torch: PEZ hard-prompt inversion (and BeautifulPrompt rewriting).

    from pez_core import load_clip, image_target, invert, PEZConfig
    clip = load_clip("tiny")
    [result] = invert(clip, [image_target(clip, [img])], PEZConfig(steps=200))

Names are imported lazily, so ``import pez_core`` (and the CLI's ``--help``) does not load torch.
"""

from ._lazy import lazy_exports

_EXPORTS = {
    "PRESETS": "presets", "Preset": "presets",
    "ClipModel": "clip", "load_clip": "clip", "save_clip": "clip",
    "ImageError": "images", "decode_image": "images", "load_image": "images",
    "PEZConfig": "pez", "PEZResult": "pez", "Target": "pez", "concat_prompts": "pez", "feature_target": "pez",
    "image_target": "pez", "invert": "pez", "text_target": "pez",
    "Vocabulary": "projection", "invert_stream": "stream", "TargetFeed": "feed", "FeedClosed": "feed",
    "JointClip": "joint",
    "invert_reference": "reference",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
