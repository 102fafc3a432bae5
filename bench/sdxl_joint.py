"""One prompt for two text encoders at once (the SDXL design, pez_core/joint.py), measured in promptmine's world.

    python bench/sdxl_joint.py                     # 16 scenes, 16 tokens, 300 steps, 1 thread
    python bench/sdxl_joint.py --scenes 32 --steps 600

The shipped `world` and `world-ref` CLIPs, trained independently (text widths 128 and 96), stand in for
SDXL's pair. For every scene (scene i from the string seed "joint:i", render seed 30000 + i) PEZ runs three
times with the same seed: against `world` alone, `world-ref` alone, and both at once (JointClip). Each of
the three prompts is then scored on each encoder alone (its mean cosine to that encoder's image features).
Prints one JSON document: per encoder, the mean cosine of each prompt, the joint prompt's ratio to the
encoder's own single-encoder prompt (ratio of means, and the median and minimum of per-scene ratios), how
many scenes the joint prompt beats the other encoder's prompt on it, and seconds per step of each run.
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=16)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from pez_core import PEZConfig, image_target, invert, load_clip
    from pez_core.joint import JointClip
    from pez_core.world.grammar import sample_scene
    from pez_core.world.render import render_scene

    enc = {"world": load_clip("world", device="cpu"), "world-ref": load_clip("world-ref", device="cpu")}
    joint = JointClip(list(enc.values()), "world+world-ref")
    images = [render_scene(sample_scene(random.Random(f"joint:{i}")), 30000 + i, joint.image_size)
              for i in range(args.scenes)]
    cfg = PEZConfig(prompt_len=args.prompt_len, steps=args.steps)

    prompts, seconds = {}, {}
    for name, clip in [*enc.items(), ("joint", joint)]:
        targets = [image_target(clip, [im], seed=i) for i, im in enumerate(images)]
        start = time.perf_counter()
        results = invert(clip, targets, cfg)
        seconds[name] = round((time.perf_counter() - start) / args.steps, 4)
        prompts[name] = [r.token_ids for r in results]
        if name == "joint":
            joint_reported = [r.extra["encoders"] for r in results]

    scores = {}  # encoder -> prompt set -> per-scene cosine on that encoder alone
    for e, clip in enc.items():
        feats = clip.encode_images(images)  # (s, emb)
        scores[e] = {name: [float(clip.encode_ids(torch.tensor([ids]))[0] @ feats[i]) for i, ids in enumerate(sets)]
                     for name, sets in prompts.items()}
        gap = max(abs(a - r[e]) for a, r in zip(scores[e]["joint"], joint_reported))
        assert gap < 1e-4, f"PEZResult.extra['encoders'] differs from a re-score by {gap}"

    report = {"config": {"scenes": args.scenes, "steps": args.steps, "prompt_len": args.prompt_len,
                         "threads": args.threads}, "seconds_per_step": seconds, "encoders": {}}
    for e, other in [("world", "world-ref"), ("world-ref", "world")]:
        s = scores[e]
        ratios = [j / o for j, o in zip(s["joint"], s[e])]
        report["encoders"][e] = {
            "mean_cosine": {name: round(statistics.mean(v), 4) for name, v in s.items()},
            "joint_over_own": round(statistics.mean(s["joint"]) / statistics.mean(s[e]), 4),
            "joint_over_own_per_scene": {"median": round(statistics.median(ratios), 4),
                                         "min": round(min(ratios), 4)},
            "joint_over_other": round(statistics.mean(s["joint"]) / statistics.mean(s[other]), 4),
            "scenes_joint_beats_other": sum(j > o for j, o in zip(s["joint"], s[other])),
        }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
