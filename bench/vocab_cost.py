"""What a ban-list or a keyword bank costs in similarity, measured in promptmine's world. Prints one JSON document.

    python bench/vocab_cost.py                     # 16 scenes, 16 tokens, 300 steps, 1 thread
    python bench/vocab_cost.py --scenes 32 --ban 5

Over N scenes (scene i from the string seed "vocab:i", render seed 40000 + i), PEZ against the shipped
`world` CLIP with the same seeds under each candidate set: the whole safe vocabulary (``free``); a
whole-word ban (``--ban`` K: the K world words the free prompts use most) and the same words as substrings
(``ban_substring``: every token containing one goes, so world words such as "blurred" go with "red");
and a keyword bank of the world's own words (``bank``). Per setting: candidates, tokens removed, mean
best cosine, its ratio to ``free`` (ratio of means) and the share of prompts that still use a banned word
(must be 0). The world CLIP has trained rows only for its own words, so the bank there costs ~nothing;
a bank of a real CLIP's vocabulary costs more (the figures are a world measurement, not a promise).
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=16)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--ban", type=int, default=3, help="ban the K world words the free prompts use most")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from pez_core import PEZConfig, Vocabulary, image_target, invert, load_clip
    from pez_core.world.grammar import FUNCTION_WORDS, WORDS, sample_scene
    from pez_core.world.render import render_scene

    clip = load_clip("world", device="cpu")
    images = [render_scene(sample_scene(random.Random(f"vocab:{i}")), 40000 + i, clip.image_size)
              for i in range(args.scenes)]
    targets = [image_target(clip, [im], seed=i) for i, im in enumerate(images)]
    base = PEZConfig(prompt_len=args.prompt_len, steps=args.steps)
    full = len(Vocabulary(clip))

    def run(name, **kw):
        cfg = PEZConfig(**{**base.__dict__, **kw})
        vocab = Vocabulary.from_config(clip, cfg)
        start = time.perf_counter()
        results = invert(clip, targets, cfg, vocab=vocab)
        return results, {"candidates": len(vocab), "removed": full - len(vocab) if cfg.allow is None else None,
                         "mean_cosine": round(statistics.mean(r.cosine for r in results), 4),
                         "seconds": round(time.perf_counter() - start, 1)}

    free, report = run("free")
    settings = {"free": report}
    counts = collections.Counter(w for r in free for w in set(r.text.split()))
    banned = [w for w, _ in counts.most_common() if w in WORDS][: args.ban]  # content words, not glue
    for name, kw in [("ban", {"ban": tuple(banned)}), ("ban_substring", {"ban_substring": tuple(banned)}),
                     ("bank", {"allow": tuple(sorted(WORDS | FUNCTION_WORDS))})]:
        results, row = run(name, **kw)
        row["ratio_to_free"] = round(row["mean_cosine"] / settings["free"]["mean_cosine"], 4)
        if name in ("ban", "ban_substring"):
            hit = (lambda t: set(banned) & set(t.split())) if name == "ban" else \
                (lambda t: any(w in t for w in banned))
            row["prompts_with_banned"] = sum(bool(hit(r.text)) for r in results)
        settings[name] = row
    print(json.dumps({"config": {"scenes": args.scenes, "steps": args.steps, "prompt_len": args.prompt_len,
                                 "threads": args.threads}, "banned": banned, "settings": settings}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
