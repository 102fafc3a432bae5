"""Does a PickScore reward model know a failed rewrite? Prints JSON.

    python bench/reward_probe.py --reward-ps W/r_ps/model [--scenes 200] [--seeds 8]

For ``--scenes`` fresh one-object world scenes (fixed seeds) it writes a raw prompt
(``low_prompt(detail=True)``), a faithful rewrite (``expansion_prompt``: the raw prompt word for word,
then the rest of the scene) and, for each kind of failure (``pez_core.world.prompts.BAD_KINDS``: the object
in the background's colour, another shape, another value of a word the raw prompt names), a failed
rewrite in the same expansion form with the copied raw words edited ("a red star at the top" -> "a red
star at the bottom, ..."), the form in which a PPO policy trained on expansions drifts.

Per kind it reports how often the reward model scores the faithful rewrite above the failed one, and how
often the truth does (the PickScore stand-in the labels use: `world-ref`'s logit_scale * cos between the raw
prompt and the rewrite's images, averaged over ``--seeds`` renders; `promptmine label`'s own scorer). A reward model that does not
rank failures below faithful rewrites is one PPO can climb by failing (docs/training.md, run 11).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def probe_pairs(scenes: int) -> list[dict]:
    """One row per (scene, kind): raw, faithful and failed rewrite."""
    from pez_core.world.prompts import (BAD_KINDS, bad_scene, edited_expansion, expansion_prompt, low_prompt,
                                        quality_scene)

    rows = []
    for i in range(scenes):
        rng = random.Random(f"reward-probe:{i}")
        scene = quality_scene(rng)
        while len(scene.objects) != 1:
            scene = quality_scene(rng)
        template = rng.getstate()
        raw = low_prompt(scene, rng, detail=True)
        faithful = expansion_prompt(scene, raw, rng)
        for kind in BAD_KINDS:
            failed, got = bad_scene(scene, raw, rng, kind)
            rows.append({"kind": got, "raw": raw, "faithful": faithful,
                         "failed": edited_expansion(failed, template, rng)})
    return rows


def true_scores(pairs: list[tuple[str, str]], seeds: int, pickscore: str) -> dict[tuple[str, str], float]:
    """The label of each distinct (raw, prompt): `promptmine label`'s own scorer (the world generator over seeds
    0..seeds-1, each image judged against the raw prompt), its mean pick_score."""
    from pipelines.evaluate.rewrite import ImageScorer

    scorer = ImageScorer({"model": "world"}, pickscore, None, "world", "world", None, list(range(seeds)))
    distinct, out = list(dict.fromkeys(pairs)), {}
    for i in range(0, len(distinct), 64):
        chunk = distinct[i:i + 64]
        scores, _ = scorer.score([prompt for _, prompt in chunk], [raw for raw, _ in chunk])
        out.update(zip(chunk, scores["pick_score"].mean(1).tolist()))
    return out


def summarise(rows: list[dict]) -> dict:
    by_kind: dict = {}
    for kind in sorted({r["kind"] for r in rows}) + ["all"]:
        sel = [r for r in rows if kind in ("all", r["kind"])]
        truth_right = [r for r in sel if r["true_faithful"] > r["true_failed"]]
        by_kind[kind] = {
            "n": len(sel),
            "truth_prefers_faithful": round(len(truth_right) / len(sel), 3),
            "model_prefers_faithful": round(sum(r["rm_faithful"] > r["rm_failed"] for r in sel) / len(sel), 3),
            "model_agrees_where_truth_prefers_faithful": round(
                sum(r["rm_faithful"] > r["rm_failed"] for r in truth_right) / max(len(truth_right), 1), 3),
            "true_gap": round(sum(r["true_faithful"] - r["true_failed"] for r in sel) / len(sel), 2),
            "model_gap": round(sum(r["rm_faithful"] - r["rm_failed"] for r in sel) / len(sel), 2),
        }
    return by_kind


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reward-ps", required=True, help="a `train reward --kind ps` model folder (OUTPUT/model)")
    ap.add_argument("--scenes", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=8, help="renders per prompt for the true score (8, as `label`)")
    ap.add_argument("--pickscore", default="world-ref", help="the PickScore stand-in of the labels (world-ref)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--examples", type=int, default=3, help="rows per kind printed with their scores")
    args = ap.parse_args()
    if args.scenes < 1 or args.seeds < 1:
        ap.error("--scenes and --seeds must be >= 1")
    import torch

    from pez_core.rewrite.reward_model import RewardModel

    torch.set_num_threads(args.threads)
    rows = probe_pairs(args.scenes)
    rm = RewardModel.from_pretrained(args.reward_ps, kind="ps")
    raws = [r["raw"] for r in rows]
    rm_f, rm_b = rm.score(raws, [r["faithful"] for r in rows]), rm.score(raws, [r["failed"] for r in rows])
    truth = true_scores([(r["raw"], r[k]) for r in rows for k in ("faithful", "failed")], args.seeds,
                        args.pickscore)  # each scene's faithful rewrite is scored once, not once per kind
    for r, a, b in zip(rows, rm_f.tolist(), rm_b.tolist()):
        r.update(rm_faithful=a, rm_failed=b, true_faithful=truth[r["raw"], r["faithful"]],
                 true_failed=truth[r["raw"], r["failed"]])
    examples = {}
    for r in rows:
        if len(examples.setdefault(r["kind"], [])) < args.examples:
            examples[r["kind"]].append({k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()})
    print(json.dumps({"reward_ps": args.reward_ps, "scenes": args.scenes, "seeds": args.seeds,
                      "by_kind": summarise(rows), "examples": examples}, indent=1))


if __name__ == "__main__":
    main()
