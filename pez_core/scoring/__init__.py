"""Scoring images made from prompts, as the papers do: diffusers generation, CLIP image-image and
text-image similarity (PEZ), PickScore and the LAION aesthetic predictor (BeautifulPrompt); ``GenerationConfig(model="world")``
selects the synthetic world's renderer (``WorldGenerator``).

    from pez_core.scoring import Generator, ClipScorer, PickScorer, AestheticScorer
    gen = Generator("stabilityai/stable-diffusion-2-1-base", steps=25, guidance=9.0)
    images = gen.generate(["a castle at dusk"] * 5, seeds=[0, 1, 2, 3, 4])
    sims = ClipScorer().image_similarity(images, ClipScorer().image_features([target]))

Plain torch (no Ray). Names are imported lazily so ``import pez_core.scoring`` loads nothing heavy.
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "ClipScorer": "clip_score", "parse_clip_spec": "clip_score", "DEFAULT_REFERENCE_CLIP": "defaults",
    "PickScorer": "pickscore", "DEFAULT_PICKSCORE": "defaults", "DEFAULT_PICKSCORE_PROCESSOR": "defaults",
    "AestheticMLP": "aesthetic", "AestheticScorer": "aesthetic", "load_aesthetic_mlp": "aesthetic",
    "AestheticWeightsError": "aesthetic", "DEFAULT_AESTHETIC_CLIP": "defaults",
    "GenerationConfig": "generate", "Generator": "generate", "WorldGenerator": "world",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
