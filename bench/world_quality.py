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
  words (``precision_with_glue`` also counts a, the, on, ...; ``content_precision`` leaves those glue words
  out: of the other words, the share that are world words);
- ``protocol``: the PEZ paper's evaluation: each prompt -> ``render`` over ``--seeds`` seeds -> cosine
  between the `world-ref` CLIP's features of each image and of the target image (a CLIP not used for
  optimisation), averaged over seeds; mean with a 95% t-interval over scenes, for PEZ prompts, the true
  captions (the ceiling), random prompts of 16 safe tokens (the floor), and a keyword-bank baseline: the
  top-k world words by the `world` CLIP's image-text cosine, joined by commas (CLIP Interrogator's fast
  mode without BLIP), with k = each prompt length. ``paired`` gives each method minus the captions.
- ``--fluency L1,L2,..``: PEZ with the fluency prior (``--prompt-lm``, default the shipped world one) at
  each weight, prompts named ``pez{n}-f{L}``; every prompt set also gets ``readability``: the share of its
  word bigrams that occur in the world's caption language (the bigrams of 20,000 captions from another
  seed than the prompt LM's training text; it does not use the LM) and ``nll``, the prompt LM's NLL per
  token. ``--plot PATH`` draws readability and regenerated similarity against the weight. With the
  fluency prior each finished prompt is polished (``--polish`` sweeps, polish.py); ``--no-polish-too``
  also runs the default weight without it, so the polish's own effect is measured on the same scenes.
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

from pez_core.world.metrics import (  # noqa: E402
    caption_bigrams, readability, regenerated_similarity, word_scores)


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


def plot_fluency(out: dict, weights: list[float], lens: list[int], path: str) -> None:
    """Readability, content word precision and regenerated similarity (relative to fluency 0) against the weight."""
    from pipelines.train.plot import line_plot_png

    series = {}
    for n in lens:
        names = [f"pez{n}" + (f"-f{w:g}" if w else "") for w in weights]
        base = out["protocol"][f"pez{n}"]["mean"]
        series[f"readability ({n} tokens)"] = [out["pez"][k]["readability"] for k in names]
        series[f"content word precision ({n} tokens)"] = [out["pez"][k]["content_precision"] for k in names]
        series[f"regenerated / fluency 0 ({n} tokens)"] = [out["protocol"][k]["mean"] / base for k in names]
    xs = list(range(len(weights)))
    Path(path).write_bytes(line_plot_png(xs, series, title="PEZ with the fluency prior (world, "
                                         f"x = fluency weight index: {', '.join(f'{w:g}' for w in weights)})",
                                         xlabel="fluency weight (index)"))


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
    p.add_argument("--fluency", default="", help="fluency weights to sweep (e.g. 0.03,0.1,0.3; PEZ without it always runs)")
    p.add_argument("--prompt-lm", default="world", help="the prompt LM of the fluency prior (preset or folder)")
    p.add_argument("--plot", help="with --fluency: write the curve (PNG) here")
    p.add_argument("--polish", type=int, default=3, help="polish sweeps with the fluency prior (PEZConfig.polish_sweeps)")
    p.add_argument("--no-polish-too", action="store_true",
                   help="also run the default fluency weight without the polish (prompts pez{n}-f{L}-nopolish)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from pez_core import PEZConfig, image_target, invert, load_clip
    from pez_core.presets import DEFAULT_FLUENCY
    from pez_core.prompt_lm import PromptLM
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
    out["pez"] = {}
    weights = [0.0] + [float(x) for x in args.fluency.split(",") if x.strip()]
    for n in (int(x) for x in args.prompt_lens.split(",")):
        prompts[f"bank{n}"] = keyword_bank(clip, feats, n)
        runs = [(lam, args.polish) for lam in weights]
        if args.no_polish_too and args.polish and DEFAULT_FLUENCY in weights:  # --polish 0: every run is one
            runs.append((DEFAULT_FLUENCY, 0))
        for lam, sweeps in runs:
            name = f"pez{n}" + (f"-f{lam:g}" if lam else "") + ("-nopolish" if lam and not sweeps else "")
            t = time.perf_counter()
            results = invert(clip, [image_target(clip, [im], seed=i) for i, im in enumerate(images)],
                             PEZConfig(steps=args.steps, prompt_len=n, fluency=lam, polish_sweeps=sweeps,
                                       prompt_lm=args.prompt_lm if lam else None))
            prompts[name] = [r.text for r in results]
            out["pez"][name] = {**word_scores(prompts[name], scenes), "fluency": lam,
                                "mean_cosine": round(statistics.mean(r.cosine for r in results), 4),
                                "seconds_per_target": round((time.perf_counter() - t) / args.scenes, 3)}
    out["words"] = {name: word_scores(ps, scenes) for name, ps in prompts.items() if not name.startswith("pez")}
    language = caption_bigrams()
    lm = PromptLM.load(args.prompt_lm)
    for group in (out["pez"], out["words"]):
        for name, scores in group.items():
            ids = [clip.tokenize(p)[:75] or [clip.tokenizer.eot_token_id] for p in prompts[name]]
            scores["readability"] = readability(prompts[name], language)
            scores["nll"] = round(statistics.mean(float(lm.nll([i])[0]) for i in ids), 3)
    sims = {name: regenerated_similarity(ref, ps, ref_targets, args.seeds) for name, ps in prompts.items()}
    out["protocol"] = {name: mean_ci(v) for name, v in sims.items()}
    out["paired_vs_caption"] = {name: paired(v, sims["caption"]) for name, v in sims.items() if name != "caption"}
    cap = out["protocol"]["caption"]["mean"]
    out["ratio_to_caption"] = {name: round(s["mean"] / cap, 4) for name, s in out["protocol"].items()}
    out["examples"] = [{"caption": prompts["caption"][i], **{k: prompts[k][i] for k in prompts if k != "caption"}}
                       for i in range(min(4, args.scenes))]
    if args.plot and len(weights) > 1:
        plot_fluency(out, weights, [int(x) for x in args.prompt_lens.split(",")], args.plot)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
