"""How good a prompt is in promptmine's world, measured without the models that made it: which scene
attributes its words name (recall per attribute, word precision), how much of it reads like the world's
caption language (bigram readability), and the PEZ paper's regenerated-image similarity under a reference
CLIP. bench/world_quality.py and bench/world_table1.py report these; tests use them as quality bars."""

from __future__ import annotations

import statistics


def attribute_words() -> dict[str, dict[str, set[str]]]:
    """attribute -> value -> the words that name it (quality words included where they stand for it)."""
    from pez_core.world import grammar as g

    table = {"colour": g.COLOURS, "shape": g.SHAPES, "size": g.SIZES, "position": g.POSITIONS,
             "background": g.COLOURS, "fill": g.FILLS, "sharpness": g.SHARPNESS, "saturation": g.SATURATION}
    out = {a: {v: set(ws) for v, ws in t.items()} for a, t in table.items()}
    for word, effects in g.QUALITY.items():
        for attr, value in effects.items():
            out[attr][value].add(word)
    return out


def scene_values(scene) -> dict[str, str]:
    o = scene.objects[0]
    return {"colour": o.colour, "shape": o.shape, "size": o.size, "position": scene.position,
            "background": scene.background, "fill": scene.fill, "sharpness": scene.sharpness,
            "saturation": scene.saturation}


def words_of(text: str) -> list[str]:
    """The prompt's whitespace-separated words, lower-cased, trailing commas and stops stripped; a token
    of punctuation alone (such as the "(" PEZ picks for a no-op slot) is a word that is no world word."""
    return [w.strip(",.;:!?") or w for w in text.lower().split()]


def word_scores(prompts: list[str], scenes: list) -> dict:
    """Recall per attribute and word precision of ``prompts`` for their ``scenes``.

    Three precisions: ``precision`` counts only the world's content / style / quality words as right (glue
    words such as "a", "the", "on" count as wrong, so the true captions score about 0.75); ``precision_with_glue``
    counts glue words as right; ``content_precision`` leaves glue words out of the count altogether: of the
    words that are not glue, the share that are world words (the true captions score 1.0, a prompt padded
    with junk does not). A prompt that is glue only has no content words and scores 0."""
    from pez_core.world.grammar import FUNCTION_WORDS, WORDS

    names = attribute_words()
    recall = {a: statistics.mean(bool(set(words_of(p)) & names[a][scene_values(s)[a]]) for p, s in zip(prompts, scenes))
              for a in names}
    all_words = [w for p in prompts for w in words_of(p)]
    precision = sum(w in WORDS for w in all_words) / max(1, len(all_words))
    glue = sum(w in WORDS or w in FUNCTION_WORDS for w in all_words) / max(1, len(all_words))
    content = [w for w in all_words if w not in FUNCTION_WORDS]
    return {"recall": {a: round(v, 4) for a, v in recall.items()}, "precision": round(precision, 4),
            "precision_with_glue": round(glue, 4),
            "content_precision": round(sum(w in WORDS for w in content) / max(1, len(content)), 4)}


def caption_bigrams(n: int = 20000, seed: int = 999) -> set[tuple[str, str]]:
    """The word bigrams of the world's caption language (captions of another seed than any training text)."""
    from pez_core.world.prompts import world_captions

    out = set()
    for c in world_captions(n, seed):
        w = words_of(c)
        out |= set(zip(w, w[1:]))
    return out


def readability(prompts: list[str], language: set) -> float:
    """Share of the prompts' word bigrams that occur in ``language`` (0 for prompts of one word)."""
    pairs = [b for p in prompts for w in [words_of(p)] for b in zip(w, w[1:])]
    return round(sum(b in language for b in pairs) / max(1, len(pairs)), 4)


def regenerated_similarity(ref, prompts: list[str], targets, seeds: int) -> list[float]:
    """Per prompt: mean over seeds of cos(ref(render(prompt, seed)), ref(target))."""
    from pez_core.world.render import render

    size = ref.image_size
    out = []
    for prompt, target in zip(prompts, targets):
        images = [render(prompt, seed=s, size=size) for s in range(seeds)]
        out.append(float((ref.encode_images(images) @ target).mean()))
    return out
