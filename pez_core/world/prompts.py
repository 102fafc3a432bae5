"""World text for the rewriting loop: short raw prompts, detailed high-quality captions, pairs and a corpus.

A pair is (raw_prompt, prompt) about one scene: the raw prompt names the first object's shape and a few
more of its attributes ("a star", "a red star on the left", "a large star on a blue background"), the prompt is a full caption of the
same scene (``captions.caption``, every attribute, 20% two-object scenes) with style words and, often,
quality words. As DiffusionDB's high-quality prompts are mostly but not always good, the scene's styles
are biased, not fixed: sharp and vivid 75% of the time each, filled 60%, large 65%, and a quality word
that agrees with the styles (``masterpiece``, ``detailed``, ``hd``, ``beautiful``) is added to 60% of them.
"""

from __future__ import annotations

import random
from dataclasses import replace
from .captions import caption, style_words
from .grammar import COLOURS, POSITIONS, RELATIONS, SHAPES, SIZES, Obj, Scene

TWO_OBJECTS = 0.2  # share of two-object scenes among high-quality prompts
_POS_WORDS = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
              "center": "in the center"}


def quality_scene(rng: random.Random) -> Scene:
    """A random scene whose styles lean toward the good ones (see the module docstring)."""
    n = 2 if rng.random() < TWO_OBJECTS else 1
    background = rng.choice(list(COLOURS))
    colours = rng.sample([c for c in COLOURS if c != background], n)
    objects = tuple(Obj(rng.choice(list(SHAPES)), c, "large" if rng.random() < 0.65 else "small") for c in colours)
    fill = "filled" if rng.random() < 0.6 else rng.choice(["outlined", "striped"])
    return Scene(objects=objects, background=background, fill=fill,
                 sharpness="sharp" if rng.random() < 0.75 else "blurry",
                 saturation="vivid" if rng.random() < 0.75 else "dull",
                 position=rng.choice(list(POSITIONS)) if n == 1 else None,
                 relation=rng.choice(list(RELATIONS)) if n == 2 else None)


def low_prompt(scene: Scene, rng: random.Random, detail: bool = False) -> str:
    """A short, under-specified prompt about the scene's first object.

    ``detail`` False (the aesthetic stand-in's training text): its shape and at most one more word.
    ``detail`` True (``world_pairs``' raw prompts): its shape, its colour 60% of the time, its size 30%,
    then its position (25%) or the background (20%): "a red star on the left", "a large star". An SFT
    model learns to carry a raw word into its rewrite only if raw prompts name it often: with one
    attribute at most, run 3's SFT never learned to copy the colour (docs/training.md)."""
    o = scene.objects[0]
    if detail:
        words = ([o.size] if rng.random() < 0.3 else []) + ([o.colour] if rng.random() < 0.6 else [])
        text, r = "a " + " ".join(words + [o.shape]), rng.random()
        if scene.position and r < 0.25:
            return f"{text} {_POS_WORDS[scene.position]}"
        return f"{text} on a {scene.background} background" if r < 0.45 else text
    choices = [f"a {o.shape}", f"a {o.colour} {o.shape}", f"a {o.size} {o.shape}"]
    if scene.position:
        choices.append(f"a {o.shape} {_POS_WORDS[scene.position]}")
    choices.append(f"a {o.shape} on a {scene.background} background")
    return rng.choice(choices)


def high_prompt(scene: Scene, rng: random.Random) -> str:
    """A detailed caption of the scene, with a quality word that agrees with its styles 60% of the time."""
    return _with_quality(caption(scene, rng), scene, rng)


def _with_quality(text: str, scene: Scene, rng: random.Random) -> str:
    """``text``, 60% of the time with a quality word that agrees with the scene's styles appended."""
    if rng.random() < 0.6:
        good = [w for w, ok in (("masterpiece", scene.sharpness == "sharp" and scene.saturation == "vivid"),
                                ("detailed", scene.sharpness == "sharp"), ("hd", scene.sharpness == "sharp"),
                                ("beautiful", scene.saturation == "vivid")) if ok]
        if good:
            text = f"{text}, {rng.choice(good)}"
    return text


def expansion_prompt(scene: Scene, raw: str, rng: random.Random) -> str:
    """The raw prompt kept word for word, then what it leaves unsaid about the (one-object) scene, as an
    LLM asked to expand a prompt writes it (the paper's third pair source): "a red star on the left" ->
    "a red star on the left, large, blue background, striped, sharp, vivid, hd". Synonyms as in captions;
    a quality word that agrees with the styles is added as in ``high_prompt``."""
    from .parse import parse

    said, o = parse(raw), scene.objects[0]
    obj = said.objects[0] if said.objects else None
    parts = [] if obj is not None and obj.size else [rng.choice(SIZES[o.size])]
    parts += [] if obj is not None and obj.colour else [rng.choice(COLOURS[o.colour])]
    words = [" ".join(parts)] if parts else []
    if said.position is None and scene.position:
        words.append(_POS_WORDS[scene.position])
    if said.background is None:
        words.append(f"{rng.choice(COLOURS[scene.background])} background")
    words.append(" ".join(style_words(scene, rng, canonical=False, drop=0.0)))
    return _with_quality(f"{raw}, {', '.join(words)}", scene, rng)


BAD_KINDS = ("world-invisible", "world-other-shape", "world-contradiction")


def bad_scene(scene: Scene, raw: str, rng: random.Random, kind: str | None = None) -> tuple[Scene, str]:
    """The scene of a failed rewrite of ``raw`` and its kind (``kind``, or one of ``BAD_KINDS`` at random): the
    object drawn in the background's colour (invisible), another shape, or another value of one attribute
    the raw prompt names (colour, size, position or background; another shape when it names none)."""
    from .parse import parse

    o, kind = scene.objects[0], kind or rng.choice(BAD_KINDS)
    if kind not in BAD_KINDS:
        raise ValueError(f"unknown kind of failed prompt {kind!r}; want one of {', '.join(BAD_KINDS)}")
    if kind == "world-contradiction":
        said = parse(raw)
        named = [a for a, ok in (("colour", said.objects and said.objects[0].colour),
                                 ("size", said.objects and said.objects[0].size),
                                 ("position", said.position), ("background", said.background)) if ok]
        if not named:
            kind = "world-other-shape"
        else:
            attr = rng.choice(named)
            if attr == "colour":
                taken = {scene.background, *(x.colour for x in scene.objects)}
                o = Obj(o.shape, rng.choice([c for c in COLOURS if c not in taken]), o.size)
            elif attr == "size":
                o = Obj(o.shape, o.colour, "small" if o.size == "large" else "large")
            elif attr == "position":
                return replace(scene, position=rng.choice([p for p in POSITIONS if p != scene.position])), kind
            else:
                taken = {x.colour for x in scene.objects} | {scene.background}
                return replace(scene, background=rng.choice([c for c in COLOURS if c not in taken])), kind
    if kind == "world-invisible":
        o = Obj(o.shape, scene.background, o.size)
    elif kind == "world-other-shape":
        o = Obj(rng.choice([s for s in SHAPES if s != o.shape]), o.colour, o.size)
    return replace(scene, objects=(o, *scene.objects[1:])), kind


def edited_expansion(failed: Scene, template: tuple, rng: random.Random) -> str:
    """A failed rewrite in expansion form: the raw prompt that ``template`` (the rng state ``low_prompt``
    started from) writes, with its words edited to match the ``failed`` scene, then the rest of that scene."""
    replay = random.Random()
    replay.setstate(template)
    return expansion_prompt(failed, low_prompt(failed, replay, detail=True), rng)


def world_pairs(n: int, seed: int = 0, bad: float = 0.0, expansions: float = 0.0) -> list[dict]:
    """``n`` (raw_prompt, prompt) pairs about random scenes, reproducible per seed.

    ``bad``: share of failed prompts, as a scraped table (or a drifting PPO policy) has them, a third of
    each kind: the object in the background's colour (invisible), another shape than the raw prompt's, or
    another value of an attribute the raw prompt names ("at the top" drawn at the bottom). They teach the
    reward models what a bad image is; ``train sft --min-pick-score`` keeps them out of SFT, as the paper's
    filter does. With ``expansions``, that share of the one-object bad prompts is written as an expansion of
    the failed scene whose copied raw words were edited to match it ("a red star at the top" -> "a red star
    at the bottom, large, ..."), the form a policy trained on expansions fails in. ``bad`` 1 makes a table of
    failures only, for the reward models and never for SFT (bench/world_rewrite_loop.py, run 14).

    ``expansions``: share of the good one-object pairs whose prompt is ``expansion_prompt`` (the raw prompt
    word for word, then the rest; source ``world-expansion``) instead of a caption written afresh."""
    if n < 1:
        raise ValueError(f"need at least one pair, got {n}")
    if not 0 <= bad <= 1:
        raise ValueError(f"--bad: the share of bad pairs must be in [0, 1], got {bad}")
    if not 0 <= expansions <= 1:
        raise ValueError(f"--expansions: the share of expansion pairs must be in [0, 1], got {expansions}")
    rng = random.Random(f"world-pairs:{seed}")
    out = []
    for _ in range(n):
        scene = quality_scene(rng)
        template = rng.getstate()  # replayed to write the raw prompt's words for a failed scene
        raw = low_prompt(scene, rng, detail=True)
        if rng.random() < bad:
            scene, source = bad_scene(scene, raw, rng)
            edited = expansions and len(scene.objects) == 1 and rng.random() < expansions
            prompt = edited_expansion(scene, template, rng) if edited else high_prompt(scene, rng)
        elif expansions and len(scene.objects) == 1 and rng.random() < expansions:
            source, prompt = "world-expansion", expansion_prompt(scene, raw, rng)
        else:
            source, prompt = "world", high_prompt(scene, rng)
        out.append({"raw_prompt": raw, "prompt": prompt, "source": source})
    return out


def world_corpus(n: int = 3000, seed: int = 0) -> list[str]:
    """Raw prompts and captions of random scenes (any styles, under-specified ones too): tokenizer text."""
    from .grammar import sample_scene

    rng = random.Random(f"world-corpus:{seed}")
    out = []
    for i in range(n):
        scene = sample_scene(rng, two_objects=0.3) if i % 2 else quality_scene(rng)
        out += [low_prompt(scene, rng), high_prompt(scene, rng), caption(scene, rng, drop=0.3)]
    return out


def world_captions(n: int, seed: int = 0) -> list[str]:
    """Captions of ``n`` random scenes (a third with two objects; any template and synonyms; under-specified
    ones too): the world's caption language, which the shipped prompt LM learns and readability is measured in."""
    from .grammar import sample_scene

    rng = random.Random(f"world-captions:{seed}")
    return [caption(sample_scene(rng, two_objects=1 / 3), rng, drop=rng.choice((0.0, 0.0, 0.3, 0.6))) for _ in range(n)]


def split_holdout(pairs: list[dict], holdout: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(pairs whose raw prompt is not held out, one row per held-out raw prompt: key, raw_prompt, prompt).

    ``holdout`` distinct raw prompts are drawn at random (per seed); all their pairs leave the training set."""
    raws = sorted({p["raw_prompt"] for p in pairs})
    if holdout < 0 or holdout >= len(raws):
        raise ValueError(f"--holdout must be in [0, {len(raws) - 1}] (there are {len(raws)} distinct raw prompts), "
                         f"got {holdout}")
    held = set(random.Random(f"holdout:{seed}").sample(raws, holdout))
    first: dict[str, str] = {}
    for p in pairs:
        if p["raw_prompt"] in held:
            first.setdefault(p["raw_prompt"], p["prompt"])
    rows = [{"key": f"heldout:{i}", "raw_prompt": r, "prompt": first[r]} for i, r in enumerate(sorted(held))]
    return [p for p in pairs if p["raw_prompt"] not in held], rows
