"""The world's prompt metrics (pez_core/world/metrics.py), on hand-written prompts whose scores are known."""

import random

from pez_core.world.captions import caption
from pez_core.world.grammar import sample_scene
from pez_core.world.metrics import word_scores


def test_word_precisions_count_glue_words_three_ways():
    """Strict precision counts glue words as wrong, content precision leaves them out, and junk lowers both.

    Catches: glue words counted as content words (content precision of the captions below 1.0), or junk
    words left out of the content count (the padded prompt scoring 1.0)."""
    scenes = [sample_scene(random.Random(f"metrics:{i}"), two_objects=0.0) for i in range(20)]
    captions = [caption(s, random.Random(i)) for i, s in enumerate(scenes)]
    clean = word_scores(captions, scenes)
    assert clean["content_precision"] == 1.0 and clean["precision_with_glue"] == 1.0
    assert clean["precision"] < 0.9  # the captions' "a", "on", "the" are not world content words

    one = scenes[0]
    assert word_scores(["a red circle on the left"], [one])["content_precision"] == 1.0
    padded = word_scores(["a red circle on the left gunna modernart"], [one])
    assert padded["content_precision"] == 0.6  # red circle left / red circle left gunna modernart
    assert padded["precision"] == 3 / 8
    assert word_scores(["a the of"], [one])["content_precision"] == 0.0
