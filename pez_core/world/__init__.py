"""A synthetic world with meaning: a scene grammar, captions, a parser, a renderer and a CLIP trained on it.

    from pez_core.world import sample_scene, caption, render
    img = render("a small red circle on the left, green background", seed=0)

Plain torch / PIL, no Ray. Names are imported lazily.
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "Scene": "grammar", "Obj": "grammar", "sample_scene": "grammar", "WORDS": "grammar",
    "caption": "captions", "short_prompt": "captions",
    "parse": "parse", "PartialScene": "parse",
    "render": "render", "render_scene": "render", "complete": "render",
    "WorldTrainConfig": "train_clip", "build_model": "train_clip", "train_steps": "train_clip",
    "make_batch": "train_clip", "save_world_clip": "train_clip", "train": "train_clip",
    "zero_shot": "zeroshot",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
