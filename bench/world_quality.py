"""Quality in promptmine's world: can the prompts PEZ finds be right or wrong? Prints one JSON document.

    python bench/world_quality.py                         # 64 held-out scenes, the shipped world / world-ref
    python bench/world_quality.py --scenes 200 --steps 300 --prompt-lens 8,16 --threads 2

Over N held-out one-object scenes (scene i from the string seed "quality:i", drawn with render seed
20000 + i; disjoint from training's seeds):
- ``zero_shot``: the `world` CLIP's accuracy per attribute (true caption vs captions differing only there);
- ``pez``: PEZ at each prompt length (``--steps`` steps): per attribute, the share of scenes whose prompt
  contains a word of the true value (colour, shape, size, position, background colour, fill, sharpness,
  saturation; quality words count for the sharpness / saturation they stand for), and word precision:
  the share of the prompt's words (whitespace-separated, punctuation-only tokens included) that are world
  words (``precision_with_glue`` also counts a, the, on, ...);
- ``protocol``: the PEZ paper's evaluation: each prompt -> ``render`` over ``--seeds`` seeds -> cosine
  between the `world-ref` CLIP's features of each image and of the target image (a CLIP not used for
  optimisation), averaged over seeds; mean with a 95% t-interval over scenes, for PEZ prompts, the true
  captions (the ceiling), random prompts of 16 safe tokens (the floor), and a keyword-bank baseline: the
  top-k world words by the `world` CLIP's image-text cosine, joined by commas (CLIP Interrogator's fast
  mode without BLIP), with k = each prompt length. ``paired`` gives each method minus the captions.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


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
    """Recall per attribute and word precision of ``prompts`` for their ``scenes``."""
    from pez_core.world.grammar import FUNCTION_WORDS, WORDS

    names = attribute_words()
    recall = {a: statistics.mean(bool(set(words_of(p)) & names[a][scene_values(s)[a]]) for p, s in zip(prompts, scenes))
              for a in names}
    all_words = [w for p in prompts for w in words_of(p)]
    precision = sum(w in WORDS for w in all_words) / max(1, len(all_words))
    glue = sum(w in WORDS or w in FUNCTION_WORDS for w in all_words) / max(1, len(all_words))
    return {"recall": {a: round(v, 4) for a, v in recall.items()}, "precision": round(precision, 4),
            "precision_with_glue": round(glue, 4)}


def keyword_bank(clip, image_features, k: int) -> list[str]:
    """The top-k world words by image-text cosine under ``clip``, joined by commas (per image)."""
    import torch

    from pez_core.world.grammar import WORDS

    bank = sorted(w for w in WORDS if w != "of")
    text = clip.encode_texts(bank)  # (w, e)
    top = (image_features @ text.T).topk(k, dim=-1).indices  # (n, k)
    return [", ".join(bank[j] for j in row.tolist()) for row in top.to(torch.long)]


def random_prompts(clip, n: int, length: int, seed: int) -> list[str]:
    import torch

    from pez_core import Vocabulary

    vocab = Vocabulary(clip)
    ids = vocab.random_ids(n * length, torch.Generator().manual_seed(seed)).view(n, length)
    return [clip.decode(row.tolist()) for row in ids]


def regenerated_similarity(ref, prompts: list[str], targets, seeds: int) -> list[float]:
    """Per prompt: mean over seeds of cos(ref(render(prompt, seed)), ref(target))."""
    from pez_core.world.render import render

    size = ref.image_size
    out = []
    for prompt, target in zip(prompts, targets):
        images = [render(prompt, seed=s, size=size) for s in range(seeds)]
        out.append(float((ref.encode_images(images) @ target).mean()))
    return out


def main(argv=None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="world", help="the CLIP PEZ optimises against (preset or folder)")
    p.add_argument("--reference", default="world-ref", help="the CLIP that scores regenerated images")
    p.add_argument("--scenes", type=int, default=64, help="held-out scenes (N)")
    p.add_argument("--steps", type=int, default=300, help="PEZ steps")
    p.add_argument("--prompt-lens", default="8,16", help="PEZ prompt lengths")
    p.add_argument("--seeds", type=int, default=5, help="renders per prompt in the protocol")
    p.add_argument("--zero-shot-scenes", type=int, default=200, help="scenes per attribute for zero-shot accuracy")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from pez_core import PEZConfig, image_target, invert, load_clip
    from pez_core.world.captions import caption
    from pez_core.world.grammar import sample_scene
    from pez_core.world.render import render_scene
    from pez_core.world.zeroshot import zero_shot

    from pipelines.evaluate.stats import mean_ci, paired

    t0 = time.perf_counter()
    clip, ref = load_clip(args.model), load_clip(args.reference)
    size = clip.image_size
    scenes = [sample_scene(random.Random(f"quality:{i}"), two_objects=0.0) for i in range(args.scenes)]
    images = [render_scene(s, 20000 + i, size) for i, s in enumerate(scenes)]
    feats = clip.encode_images(images)
    ref_targets = ref.encode_images([render_scene(s, 20000 + i, ref.image_size) for i, s in enumerate(scenes)])

    out = {"model": args.model, "reference": args.reference, "scenes": args.scenes, "steps": args.steps,
           "seeds": args.seeds, "zero_shot": zero_shot(clip, n=args.zero_shot_scenes) if args.zero_shot_scenes else {}}
    prompts = {"caption": [caption(s) for s in scenes],
               "random": random_prompts(clip, args.scenes, 16, seed=7)}
    out["pez"], pez_seconds = {}, {}
    for n in (int(x) for x in args.prompt_lens.split(",")):
        t = time.perf_counter()
        results = invert(clip, [image_target(clip, [im], seed=i) for i, im in enumerate(images)],
                         PEZConfig(steps=args.steps, prompt_len=n))
        pez_seconds[n] = time.perf_counter() - t
        prompts[f"pez{n}"] = [r.text for r in results]
        prompts[f"bank{n}"] = keyword_bank(clip, feats, n)
        out["pez"][f"pez{n}"] = {**word_scores(prompts[f"pez{n}"], scenes),
                                 "mean_cosine": round(statistics.mean(r.cosine for r in results), 4),
                                 "seconds_per_target": round(pez_seconds[n] / args.scenes, 3)}
    out["words"] = {name: word_scores(ps, scenes) for name, ps in prompts.items() if not name.startswith("pez")}
    sims = {name: regenerated_similarity(ref, ps, ref_targets, args.seeds) for name, ps in prompts.items()}
    out["protocol"] = {name: mean_ci(v) for name, v in sims.items()}
    out["paired_vs_caption"] = {name: paired(v, sims["caption"]) for name, v in sims.items() if name != "caption"}
    cap = out["protocol"]["caption"]["mean"]
    out["ratio_to_caption"] = {name: round(s["mean"] / cap, 4) for name, s in out["protocol"].items()}
    out["examples"] = [{"caption": prompts["caption"][i], **{k: prompts[k][i] for k in prompts if k != "caption"}}
                       for i in range(min(4, args.scenes))]
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
