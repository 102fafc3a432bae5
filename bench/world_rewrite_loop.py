"""BeautifulPrompt's whole loop in promptmine's world, through the real commands; prints JSON.

    python bench/world_rewrite_loop.py --workdir /tmp/world-loop            # the documented run (docs/training.md)
    python bench/world_rewrite_loop.py --workdir /tmp/wl-toy --scale toy    # plumbing only, a few minutes
    python bench/world_rewrite_loop.py --workdir /tmp/wl40 --set count=40000 --set sft_epochs=4 --set reward_epochs=3

Stages (each a `promptmine` subprocess; a stage whose output exists is skipped, so a rerun resumes):
pairs --source world (every good one-object pair an expansion: docs/training.md, runs 8-9) -> world init-lm
-> label (world generator, 8 seeds, PickScore stand-in `world-ref`, aesthetic stand-in `world`) -> pairs and
label of a second table of failed pairs only (`pairs --bad 1`, another seed; run 14: the reward models learn
them from it, SFT never sees it) -> train sft -> train reward --kind ps / aes on both tables -> train ppo
-> rewrite the held-out raw prompts with the SFT and the PPO model -> eval rewrite of each -> paired
comparison raw / SFT / PPO on each stand-in score and on the combined reward alpha * pick + (1 - alpha) * aesthetic.

Two held-out sets: ``heldout`` (the 32 raw prompts `pairs --holdout` keeps out of training, on which the
recipe was developed) and ``heldout_fresh`` (128 raw prompts that no training pair and no first held-out
prompt contains, from other seeds' scenes; rarer prompts, so they name a little more: 7.5 words against
6.6), which checks any difference found on the first.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # compare() imports pipelines.evaluate.stats: run from a checkout, not installed
SCORERS = ["--generator", "world", "--pickscore", "world-ref", "--aesthetic-weights", "world",
           "--aesthetic-clip", "world"]
SCALES = {  # the documented run, and a toy one that only checks the plumbing
    "full": dict(count=10000, holdout=32, sft_epochs=15, reward_epochs=12, ppo_steps=1280, rollouts=64, minibatch=16,
                 eval_seeds=8, expansions_pct=100, fresh=128, bad_pct=15, fail_count=7200, kl_horizon=500),
    "toy": dict(count=120, holdout=8, sft_epochs=1, reward_epochs=1, ppo_steps=8, rollouts=8, minibatch=4,
                eval_seeds=2, expansions_pct=100, fresh=8, bad_pct=15, fail_count=40, kl_horizon=2000),
}


def promptmine(args: list[str], log: Path) -> float:
    """Run one promptmine command (output to ``log``); returns its seconds; exits on failure."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    t0 = time.monotonic()
    with open(log, "w") as f:
        status = subprocess.call([sys.executable, "-m", "pipelines.cli", *args], stdout=f, stderr=subprocess.STDOUT,
                                 env=env, cwd=log.parent)
    if status:
        sys.exit(f"promptmine {' '.join(args)} failed ({status}); see {log}")
    return round(time.monotonic() - t0, 1)


def stages(w: Path, s: dict, alpha: float, workers: int) -> list[tuple[str, Path, list[str]]]:
    """(name, output that marks it done, arguments) of every stage, in order."""
    train = ["--workers", str(workers), "--max-length", "96"]
    reward_extra = ["--data", str(w / "labels_fail" / "rows")] if s["fail_count"] else []
    return [
        ("pairs", w / "pairs.parquet", ["pairs", "--source", "world", "--count", str(s["count"]),
                                        "--bad", str(s["bad_pct"] / 100),
                                        "--expansions", str(s["expansions_pct"] / 100),
                                        "--holdout", str(s["holdout"]), "--holdout-output", str(w / "heldout.parquet"),
                                        "--output", str(w / "pairs.parquet")]),
        ("init-lm", w / "lm", ["world", "init-lm", "--output", str(w / "lm")]),
        ("init-lm4", w / "lm4", ["world", "init-lm", "--output", str(w / "lm4"), "--layers", "4"]),
        ("label", w / "labels" / "metrics.json", ["label", "--input", str(w / "pairs.parquet"), "--output",
                                                  str(w / "labels"), *SCORERS, "--seeds", "8", "--batch-rows", "32",
                                                  "--actors", "2", "--rows-per-shard", "2500"]),
        *([("pairs-fail", w / "fail_pairs.parquet",
            ["pairs", "--source", "world", "--seed", str(FAIL_SEED), "--count", str(s["fail_count"]), "--bad", "1",
             "--expansions", str(s["expansions_pct"] / 100), "--output", str(w / "fail_pairs.parquet")]),
           ("label-fail", w / "labels_fail" / "metrics.json",
            ["label", "--input", str(w / "fail_pairs.parquet"), "--output", str(w / "labels_fail"), *SCORERS,
             "--seeds", "8", "--batch-rows", "32", "--actors", "2", "--rows-per-shard", "2500"])]
          if s["fail_count"] else []),
        ("sft", w / "sft" / "summary.json", ["train", "sft", "--data", str(w / "labels" / "rows"),
                                             "--min-pick-score", "12", "--output",
                                             str(w / "sft"), "--model", str(w / "lm"), "--epochs",
                                             str(s["sft_epochs"]), "--batch-size", "16", "--lr", "3e-3",
                                             "--checkpoint-every", "500", "--eval-fraction", "0.05", *train]),
        *[(f"reward-{k}", w / f"r_{k}" / "summary.json",
           ["train", "reward", "--kind", k, "--data", str(w / "labels" / "rows"), *reward_extra, "--output",
            str(w / f"r_{k}"),
            "--model", str(w / ("lm4" if k == "ps" else "sft/model")), "--epochs", str(s["reward_epochs"]),
            "--batch-size", "16", "--lr", "1e-3" if k == "ps" else "2e-3", "--checkpoint-every", "1000",
            "--eval-fraction", "0.05", *train]) for k in ("ps", "aes")],
        ("ppo", w / "ppo" / "summary.json",
         ["train", "ppo", "--data", str(w / "pairs.parquet"), "--output", str(w / "ppo"), "--model",
          str(w / "sft" / "model"), "--reward-ps", str(w / "r_ps" / "model"),
          "--reward-aes", str(w / "r_aes" / "model"),
          "--alpha", str(alpha), "--max-steps", str(s["ppo_steps"]), "--rollouts-per-step", str(s["rollouts"]),
          "--chunk-size", str(s["rollouts"]), "--minibatch-size", str(s["minibatch"]), "--ppo-epochs", "4",
          "--num-layers-unfrozen", "-1", "--lr", "5e-5", "--max-new-tokens", "40", "--kl-horizon", str(s["kl_horizon"]),
          "--eval-interval", str(max(1, s["ppo_steps"] // 4)), "--eval-prompts", "32", "--checkpoint-every", "1000",
          *train]),
        *[(f"rewrite-{m}{x}", w / f"rw_{m}{x}" / "summary.json",
           ["rewrite", "--input", str(w / f"heldout{x}.parquet"), "--prompt-column", "raw_prompt", "--key-column",
            "key", "--model", str(w / "sft/model") if m == "sft" else "{PPO_MODEL}", "--max-new-tokens", "40",
            "--output", str(w / f"rw_{m}{x}"), "--actors", "1"]) for x in HELDOUT_SETS for m in ("sft", "ppo")],
        *[(f"eval-{m}{x}", w / f"ev_{m}{x}" / "metrics.json",
           ["eval", "rewrite", "--input", str(w / f"rw_{m}{x}"), "--output", str(w / f"ev_{m}{x}"), *SCORERS,
            "--clip-score-model", "world-ref", "--seeds", str(s["eval_seeds"]), "--actors", "1"])
          for x in HELDOUT_SETS for m in ("sft", "ppo")],
    ]


FAIL_SEED = 8  # the failures table's `pairs --seed` (the main table uses the default, 0)
HELDOUT_SETS = ("", "_fresh")  # heldout.parquet (from `pairs --holdout`) and heldout_fresh.parquet


def fresh_heldout(w: Path, n: int) -> None:
    """``heldout_fresh.parquet``: ``n`` raw prompts that neither the training pairs nor heldout.parquet contain,
    drawn from the held-out lists of other `pairs` seeds (100, 101, ...): a second held-out set, never looked
    at while a recipe was chosen, so that a difference found on the 32 prompts of the first can be checked."""
    import pandas as pd

    from pez_core.world.prompts import split_holdout, world_pairs

    out = w / "heldout_fresh.parquet"
    if out.exists():
        return
    seen = {*pd.read_parquet(w / "pairs.parquet")["raw_prompt"], *pd.read_parquet(w / "heldout.parquet")["raw_prompt"]}
    rows: dict[str, str] = {}
    for seed in range(100, 200):
        pairs = world_pairs(4000, seed, bad=0.0, expansions=1.0)
        for row in split_holdout(pairs, 400, seed)[1]:
            if row["raw_prompt"] not in seen:
                rows.setdefault(row["raw_prompt"], row["prompt"])
        if len(rows) >= n:
            break
    picked = list(rows)[:n]
    pd.DataFrame({"key": [f"fresh:{i}" for i in range(len(picked))], "raw_prompt": picked,
                  "prompt": [rows[r] for r in picked]}).to_parquet(out)


def compare(w: Path, alpha: float, x: str = "") -> dict:
    """Raw vs SFT vs PPO on one held-out set (``x``: "" or "_fresh"): means with 95% CIs and paired
    differences with win rates."""
    import pandas as pd

    from pipelines.evaluate.stats import mean_ci, paired

    cols = ["key", "raw_prompt", "prompt", "raw_pick_score", "pick_score", "raw_aesthetic_score", "aesthetic_score"]
    sft = pd.read_parquet(w / f"ev_sft{x}" / "rows", columns=cols).set_index("key")
    ppo = pd.read_parquet(w / f"ev_ppo{x}" / "rows", columns=cols).set_index("key").loc[sft.index]
    out: dict = {"n": len(sft)}
    for name, col in (("pick_score", "pick_score"), ("aesthetic_score", "aesthetic_score"), ("combined", None)):
        def get(df, raw=False):
            if col is not None:
                return df[f"raw_{col}" if raw else col]
            p, a = (df["raw_pick_score"], df["raw_aesthetic_score"]) if raw else (df["pick_score"],
                                                                                   df["aesthetic_score"])
            return alpha * p + (1 - alpha) * a
        out[name] = {"raw": mean_ci(get(sft, raw=True)), "sft": mean_ci(get(sft)), "ppo": mean_ci(get(ppo)),
                     "sft_minus_raw": paired(get(sft), get(sft, raw=True)),
                     "ppo_minus_sft": paired(get(ppo), get(sft)), "ppo_minus_raw": paired(get(ppo), get(sft, raw=True))}
    out["keeps"] = {"sft": keeps(sft["raw_prompt"], sft["prompt"]), "ppo": keeps(ppo["raw_prompt"], ppo["prompt"])}
    out["examples"] = [{"raw": r, "sft": s, "ppo": p} for r, s, p in
                       zip(sft["raw_prompt"][:6], sft["prompt"][:6], ppo["prompt"][:6])]
    return out


def keeps(raws, rewrites) -> dict:
    """What rewrites keep of their raw prompts, read by the renderer's parser: per attribute the raw prompt
    names, "kept/named"; plus the rewrites whose object takes the background's colour (invisible)."""
    from pez_core.world.parse import parse

    counts = {k: [0, 0] for k in ("shape", "colour", "size", "position", "background")}
    invisible = 0
    for raw, rewrite in zip(raws, rewrites):
        want, got = parse(raw), parse(rewrite)
        w, g = (want.objects[0] if want.objects else None), (got.objects[0] if got.objects else None)
        for k, a, b in (("shape", w and w.shape, g and g.shape), ("colour", w and w.colour, g and g.colour),
                        ("size", w and w.size, g and g.size), ("position", want.position, got.position),
                        ("background", want.background, got.background)):
            if a is not None:
                counts[k][0] += a == b
                counts[k][1] += 1
        invisible += bool(g and g.colour is not None and g.colour == got.background)
    return {**{k: f"{kept}/{named}" for k, (kept, named) in counts.items()}, "invisible": invisible}


def training_facts(w: Path) -> dict:
    import pandas as pd

    facts = {}
    for k in ("ps", "aes"):
        final = json.loads((w / f"r_{k}" / "summary.json").read_text())["final"]
        facts[f"reward_{k}"] = {"eval_pearson": final.get("eval_pearson"), "eval_mse": final.get("eval_mse")}
    facts["sft"] = json.loads((w / "sft" / "summary.json").read_text())["final"]
    m = pd.read_csv(w / "ppo" / "metrics.csv")
    facts["ppo"] = {"collections": len(m), "updates": int(m["updates"].iloc[-1]),
                    "score_first": float(m["score"].iloc[0]), "score_last": float(m["score"].iloc[-1]),
                    "kl_max": float(m["kl"].max()), "kl_last": float(m["kl"].iloc[-1]),
                    "kl_coef_min": float(m["kl_coef"].min()), "kl_coef_max": float(m["kl_coef"].max()),
                    "kl_coef_last": float(m["kl_coef"].iloc[-1]),
                    "eval_reward": [float(x) for x in m["eval_reward"].dropna()] if "eval_reward" in m else []}
    return facts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", required=True, type=Path)
    ap.add_argument("--scale", choices=sorted(SCALES), default="full")
    ap.add_argument("--alpha", type=float, default=0.7, help="weight of the PickScore stand-in (0.7)")
    ap.add_argument("--workers", type=int, default=2, help="Ray Train workers per training stage (2)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=N",
                    help="override one number of the scale (repeatable): " + ", ".join(SCALES["full"]))
    args = ap.parse_args()
    scale = dict(SCALES[args.scale])
    for item in args.set:
        key, _, value = item.partition("=")
        low, high = {"expansions_pct": (0, 100), "bad_pct": (0, 99), "fail_count": (0, None)}.get(key, (1, None))
        if key not in scale or not value.isdigit() or int(value) < low or (high and int(value) > high):
            ap.error(f"--set {item!r}: want KEY=N with N >= 1 (expansions_pct: 0-100, bad_pct: 0-99, fail_count: "
                     f">= 0, 0: no failures table) and KEY one of "
                     f"{', '.join(scale)}")
        scale[key] = int(value)
    w = args.workdir.resolve()
    w.mkdir(parents=True, exist_ok=True)
    seconds = {}
    for name, done, cmd in stages(w, scale, args.alpha, args.workers):
        if name == "rewrite-sft_fresh":
            fresh_heldout(w, scale["fresh"])
        if done.exists():
            seconds[name] = "done before"
            continue
        best = w / "ppo" / "best"  # what `serve --rewrite-model OUTPUT` deploys: the best held-out reward
        cmd = [str(best if best.is_dir() else w / "ppo" / "model") if c == "{PPO_MODEL}" else c for c in cmd]
        seconds[name] = promptmine(cmd, w / f"{name}.log")
        print(f"{name}: {seconds[name]} s", file=sys.stderr, flush=True)
    result = {"scale": args.scale, "settings": scale, "workdir": str(w), "seconds": seconds,
              "training": training_facts(w), "heldout": compare(w, args.alpha),
              "heldout_fresh": compare(w, args.alpha, "_fresh")}
    (w / "loop.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
