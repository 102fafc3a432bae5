"""PEZ time to quality: how fast batched PEZ reaches the reference mode's full-budget cosine, per target.

    python bench/pez_time_to_quality.py --model world --steps 3000 --batch 32 > ttq_world.json
    python bench/pez_time_to_quality.py --model vit-b-32 --steps 300 --ref-targets 4 > ttq_vitb32.json

Three measured parts, each in a fresh subprocess at --threads torch threads (default 1), on the same
world scene images (pipelines.io.samples.make_sample_image(1000 + i), seed i for target i):

1. reference: ``invert_reference`` for --steps on the first --ref-targets targets; its returned TEXT is
   re-scored by the CLIP's own ``encode_text`` (the bar each target must reach: --quality of it).
2. full: batched ``invert`` on --batch targets for --steps with no early stop, recording every target's
   best-so-far cosine at every step: the distribution of steps to reach 99% / 99.9% of its own
   full-budget best, and the step and amortised wall time (step x s/step / batch) at which it first
   reaches the reference bar.
3. default: the default stopping rule (PEZConfig's), batched with continuous batching
   (``invert_stream``, --batch slots, the queue = the same targets): wall time per target, mean batch
   occupancy, steps run, and the re-scored final cosine against the reference bar and the full run.

The headline ratio: reference seconds per target for its full budget / default-rule batched seconds
per target (wall time / targets), with the share of targets that reached the reference bar.

Variants (a learning-rate schedule, restarts: any PEZConfig overrides) are measured against the same
reference: ``--part full --config lr=0.3,lr_schedule=cosine --steps 900 > v.json`` (a variant's budget is
its --steps), then ``--variant NAME=v.json`` beside the paper setting's full part. Per variant: steps and
CPU s to the reference bar, its stopping rule simulated on its trajectories (exact: a stop only truncates
a target's own trajectory) with the final cosine as a share of the paper setting's 3000-step result and
of the variant's own full budget. A target's trajectory does not depend on its batch, so a variant can
be screened on the --ref-targets targets alone (--batch 8) at the same figures per step.
A part's JSON from an earlier ``--part`` run can be reused (``--reuse reference=FILE``): the reference
does not depend on anything the batched loop changes, and the rule grid is computed from the full run.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import time

MODELS = {"world": ("world", None), "tiny": ("tiny", None), "vit-b-32": ("ViT-B-32", "random")}


def _setup(args, n):
    import torch

    torch.set_num_threads(args.threads)
    from pez_core import image_target, load_clip
    from pipelines.io.samples import make_sample_image

    spec, tag = MODELS[args.model]
    clip = load_clip(spec, pretrained=tag, device="cpu")
    o = args.target_offset  # a held-out set of targets: the same scenes and seeds, further on
    targets = [image_target(clip, [make_sample_image(1000 + o + i)], seed=o + i) for i in range(n)]
    return clip, targets


def parse_config(text: str) -> dict:
    """PEZConfig overrides from ``key=value,key=value`` (values as JSON where they parse, else strings)."""
    out = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value.strip()
    return out


def _cfg(args, **fixed):
    """The batched parts' PEZConfig: --steps, --prompt-len, then --config's overrides (a variant's steps too)."""
    from pez_core import PEZConfig

    return PEZConfig(**{"prompt_len": args.prompt_len, "steps": args.steps, **fixed, **parse_config(args.config)})


def _rescore(clip, results, targets) -> list[float]:
    texts = clip.encode_texts([r.text for r in results])
    return [float((texts[i] @ t.features.T).mean()) for i, t in enumerate(targets)]


def part_reference(args) -> dict:
    from pez_core import PEZConfig, invert_reference

    clip, targets = _setup(args, args.ref_targets)
    cfg = PEZConfig(prompt_len=args.prompt_len, steps=args.steps)  # the reference always runs every step
    rows = []
    for i, t in enumerate(targets):
        t0 = time.perf_counter()
        [r] = invert_reference(clip, [t], cfg)
        seconds = time.perf_counter() - t0
        [re] = _rescore(clip, [r], [t])
        rows.append({"target": i, "seconds": round(seconds, 3), "cosine": round(r.cosine, 6),
                     "rescored_cosine": round(re, 6), "best_step": r.best_step, "text": r.text})
        print(json.dumps(rows[-1]), file=sys.stderr)
    return {"part": "reference", "model": args.model, "steps": args.steps, "prompt_len": args.prompt_len,
            "threads": args.threads, "targets": rows}



def part_timing(args) -> dict:
    """Seconds per step of the reference mode and of one full batch, measured back to back (CPU time
    of this one-thread process, and wall time), so the ratio is within one run."""
    from pez_core import PEZConfig, Vocabulary, invert, invert_reference

    clip, targets = _setup(args, args.batch)
    cfg = _cfg(args, early_stop=False)
    cfg = PEZConfig(**{**cfg.__dict__, "steps": args.timing_steps, "lr_horizon": cfg.lr_horizon or cfg.steps})
    vocab = Vocabulary(clip)
    out = {}
    for mode in ("reference", "batched", "reference_again"):
        stamps: list[tuple[float, float]] = []
        on_step = lambda step, _, stamps=stamps: stamps.append((time.process_time(), time.perf_counter()))
        if mode == "batched":
            invert(clip, targets, cfg, vocab=vocab, on_step=on_step)
        else:
            invert_reference(clip, targets[:1], cfg, on_step=on_step)
        cpu = statistics.median(b[0] - a[0] for a, b in itertools.pairwise(stamps))
        wall = statistics.median(b[1] - a[1] for a, b in itertools.pairwise(stamps))
        out[mode] = {"cpu_s_per_step": round(cpu, 5), "wall_s_per_step": round(wall, 5)}
    return {"part": "timing", "batch": args.batch, "steps": args.timing_steps, "config": args.config, **out}


def _bests(args, cfg, slots, n):
    """Run batched PEZ; per target its best-so-far improvements [(own step, cosine)], its result, and
    the run's CPU/wall seconds and occupancy."""
    from pez_core import Vocabulary, invert_stream

    clip, targets = _setup(args, n)
    vocab = Vocabulary(clip)
    best = [-2.0] * n
    events: list[list] = [[] for _ in range(n)]

    def trace(indices, own, sims):
        for i, s, c in zip(indices, own.tolist(), sims.tolist()):
            if c > best[i]:
                best[i] = c
                events[i].append((s, c))
    c0, w0 = time.process_time(), time.perf_counter()
    stream = invert_stream(clip, targets, cfg, slots=slots, vocab=vocab, trace=trace)
    results = dict(stream)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    results = [results[i] for i in range(n)]
    return clip, targets, results, events, {"cpu_seconds": round(cpu, 3), "wall_seconds": round(wall, 3),
                                            "occupancy": round(stream.occupancy, 4),
                                            "batch_steps": stream.global_steps}


def part_full(args) -> dict:
    """Every target runs the whole budget (no early stop): its best-so-far trajectory."""
    cfg = _cfg(args, early_stop=False)
    clip, targets, results, events, run = _bests(args, cfg, args.batch, args.batch)
    rescored = _rescore(clip, results, targets)
    return {"part": "full", "steps": cfg.steps, "config": args.config, "run": run, "targets": [
        {"target": i, "cosine": round(r.cosine, 6), "rescored_cosine": round(rescored[i], 6),
         "best_step": r.best_step, "events": [(s, round(c, 6)) for s, c in events[i]]}
        for i, r in enumerate(results)]}


def part_default(args) -> dict:
    """The default stopping rule, continuous batching over the same targets (--batch slots)."""
    cfg = _cfg(args)
    clip, targets, results, _, run = _bests(args, cfg, args.batch, args.default_targets or args.batch)
    rescored = _rescore(clip, results, targets)
    return {"part": "default", "run": run, "overrides": args.config, "steps": cfg.steps, "config": {"plateau_patience": cfg.plateau_patience,
                                                      "plateau_ratio": cfg.plateau_ratio},
            "targets": [{"target": i, "cosine": round(r.cosine, 6), "rescored_cosine": round(rescored[i], 6),
                         "steps_run": r.steps_run, "best_step": r.best_step} for i, r in enumerate(results)]}


def _pct(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, max(0, math.ceil(q * len(v)) - 1))]


def _dist(values) -> dict:
    return {"median": statistics.median(values), "p90": _pct(values, 0.9), "max": max(values)}


def _first_reach(events, level):
    """First own step (0-based) at which the best-so-far reaches ``level``, or None."""
    return next((s for s, c in events if c >= level), None)


def simulate_rule(events, patience: int, ratio: float, steps: int) -> tuple[float, int]:
    """(final best cosine, steps run) the plateau rule would give on one full-budget trajectory."""
    for (b, c), nxt in zip(events, [*events[1:], (math.inf, None)]):
        stop = min(steps, b + 1 + math.ceil(max(patience, ratio * (b + 1))))
        if nxt[0] >= stop:
            return c, stop
    return events[-1][1], steps


def rule_grid(full: dict, steps: int) -> list[dict]:
    """What plateau rules would have given on the full run: share of the full-budget mean cosine, mean steps."""
    ft = full["targets"]
    full_mean = statistics.mean(t["cosine"] for t in ft)
    grid = []
    for patience in (25, 50, 100, 200, 300, 500, 800, 1000):
        for ratio in (0.0, 0.25, 0.5, 1.0, 2.0, 3.0):
            sims = [simulate_rule(t["events"], patience, ratio, steps) for t in ft]
            grid.append({"plateau_patience": patience, "plateau_ratio": ratio,
                         "share_of_full_mean_cosine": round(statistics.mean(c for c, _ in sims) / full_mean, 4),
                         "mean_steps": round(statistics.mean(s for _, s in sims), 1)})
    return grid


def _ref_summary(ref, ref_cpu, ref_seconds) -> dict:
    return {"targets": len(ref["targets"]), "steps": ref["steps"], "cpu_s_per_step": round(ref_cpu, 5),
            "cpu_seconds_per_target": round(ref_seconds, 2),
            "mean_rescored_cosine": _mean([r["rescored_cosine"] for r in ref["targets"]])}


def _mean(values, digits=4):
    """Rounded mean, or None without values (``--reuse reference=none``: a held-out set has no reference)."""
    return round(statistics.mean(values), digits) if values else None


def _full_summary(ft, bars, batch_step, batch, ref_seconds) -> dict:
    """A full-budget run: steps to 99% / 99.9% of each target's own best, and to the reference bar."""
    k = len(bars)
    reached = [s + 1 for s in (_first_reach(t["events"], bar) for t, bar in zip(ft, bars)) if s is not None]
    own99 = [_first_reach(t["events"], 0.99 * t["cosine"]) + 1 for t in ft]
    own999 = [_first_reach(t["events"], 0.999 * t["cosine"]) + 1 for t in ft]
    median = statistics.median(reached + [math.inf] * (k - len(reached))) if k else math.inf  # a target short of it counts as never
    cpu = round(median * batch_step / batch, 3) if median < math.inf else None
    return {"targets": len(ft), "mean_rescored_cosine": round(statistics.mean(t["rescored_cosine"] for t in ft), 4),
            "steps_to_99pct_of_own_best": _dist(own99), "steps_to_99_9pct_of_own_best": _dist(own999),
            "targets_reaching_reference_bar": f"{len(reached)}/{k}",
            "steps_to_reference_bar": _dist(reached) if reached else None,
            # the median over all k targets (None if half never reach it), at a full batch's step per target
            "cpu_seconds_to_reference_bar_per_target": cpu,
            "speedup_to_reference_bar": round(ref_seconds / cpu, 1) if cpu else None}


def _rule_on_full(full, cfg, bars, quality, batch_step, batch, ref_seconds, paper_mean) -> dict:
    """The config's stopping rule on the full run's trajectories: exact, since a stop only truncates a
    target's own trajectory (the schedule and restarts depend on its own steps alone). Loop cosines."""
    ft, k = full["targets"], len(bars)
    sims = [simulate_rule(t["events"], cfg.plateau_patience, cfg.plateau_ratio, cfg.steps) for t in ft]
    mean_steps = statistics.mean(st for _, st in sims)
    final = statistics.mean(c for c, _ in sims)
    cpu = mean_steps * batch_step / batch  # at a full batch (continuous batching with a long queue)
    return {"plateau_patience": cfg.plateau_patience, "plateau_ratio": cfg.plateau_ratio, "budget": cfg.steps,
            "mean_steps": round(mean_steps, 1), "steps": _dist([st for _, st in sims]),
            "mean_final_cosine": round(final, 4),
            "share_of_paper_3000_step_cosine": round(final / paper_mean, 4),
            "share_of_own_full_budget_cosine": round(final / statistics.mean(t["cosine"] for t in ft), 4),
            "targets_at_reference_bar": f"{sum(sims[i][0] >= bars[i] for i in range(k))}/{k}",
            "mean_share_of_reference_cosine_first_k": _mean([sims[i][0] / (bars[i] / quality) for i in range(k)]),
            "cpu_seconds_per_target_full_batch": round(cpu, 3),
            "speedup_vs_reference_full_budget": round(ref_seconds / cpu, 1)}


def analyse(ref: dict, timing: dict, full: dict, default: dict | None, quality: float,
            variants: dict | None = None) -> dict:
    """The headline figures: the paper setting's full run (``full``) and each variant's full run."""
    from pez_core import PEZConfig

    k = len(ref["targets"])
    bars = [quality * r["rescored_cosine"] for r in ref["targets"]]
    ref_cpu = statistics.mean([timing["reference"]["cpu_s_per_step"], timing["reference_again"]["cpu_s_per_step"]])
    ref_seconds = ref_cpu * ref["steps"]  # per target, its full budget
    batch_step, batch = timing["batched"]["cpu_s_per_step"], timing["batch"]  # one step of a full batch
    paper_mean = statistics.mean(t["cosine"] for t in full["targets"])
    out = {"reference": _ref_summary(ref, ref_cpu, ref_seconds), "batched_cpu_s_per_step": batch_step,
           "variants": {}}
    for name, (overrides, vfull) in {"paper": ("", full), **(variants or {})}.items():
        cfg = PEZConfig(**{"steps": vfull["steps"], **parse_config(overrides)})
        out["variants"][name] = {
            "config": overrides, "full_budget": _full_summary(vfull["targets"], bars, batch_step, batch, ref_seconds),
            "default_rule_on_full_run": _rule_on_full(vfull, cfg, bars, quality, batch_step, batch, ref_seconds, paper_mean),
            "rule_grid": rule_grid(vfull, cfg.steps)}
    if default is not None:  # a measured default-rule run (of --config): wall and CPU time, re-scored cosines
        dt = default["targets"]
        per_target = default["run"]["cpu_seconds"] / len(dt)
        mean = statistics.mean(t["rescored_cosine"] for t in dt)
        out["default_rule_measured"] = {
            "config": default.get("overrides", ""), "targets": len(dt), "slots": batch,
            "occupancy": default["run"]["occupancy"], "steps_run": _dist([t["steps_run"] for t in dt]),
            "mean_steps_run": round(statistics.mean(t["steps_run"] for t in dt), 1),
            "cpu_seconds_per_target": round(per_target, 3), "mean_rescored_cosine": round(mean, 4),
            "share_of_paper_3000_step_cosine": round(
                mean / statistics.mean(t["rescored_cosine"] for t in full["targets"][:len(dt)]), 4),
            "targets_at_reference_bar": f"{sum(t['rescored_cosine'] >= b for t, b in zip(dt, bars))}/{k}",
            "mean_share_of_reference_cosine": round(statistics.mean(
                t["rescored_cosine"] / r["rescored_cosine"] for t, r in zip(dt, ref["targets"])), 4),
            "speedup_vs_reference_full_budget": round(ref_seconds / per_target, 1)}
    return out


PARTS = {"reference": part_reference, "timing": part_timing, "full": part_full, "default": part_default}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default="world")
    p.add_argument("--steps", type=int, default=3000, help="the full budget (reference and full run)")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--batch", type=int, default=32, help="targets (and slots of the default-rule run)")
    p.add_argument("--ref-targets", type=int, default=32, help="targets the reference mode runs (the first k)")
    p.add_argument("--threads", type=int, default=1, help="torch threads in every part")
    p.add_argument("--quality", type=float, default=0.99, help="share of the reference cosine to reach")
    p.add_argument("--config", default="", metavar="KEY=VALUE,...",
                   help="PEZConfig overrides of the timing, full and default parts (e.g. lr=0.3,lr_schedule=cosine)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=FILE[@KEY=VALUE,...]",
                   help="a variant's full part (a --part full --config ... run), analysed beside the paper setting; "
                        "after @, stopping-rule overrides simulated on the same trajectories")
    p.add_argument("--reuse", action="append", default=[], metavar="PART=FILE",
                   help="reuse a part's JSON from an earlier --part run (the reference: also its logged lines)")
    p.add_argument("--timing-steps", type=int, default=30, help="steps of the per-step timing part")
    p.add_argument("--default-targets", type=int, default=0,
                   help="queue length of the default-rule run (default: --batch; more shows refilling)")
    p.add_argument("--skip-default", action="store_true",
                   help="no measured default-rule run (its figures then come from the full run's trajectories)")
    p.add_argument("--target-offset", type=int, default=0,
                   help="start at scene 1000 + this (seed: this): a held-out set to check a calibration on")
    p.add_argument("--part", choices=sorted(PARTS), help="run one part here and print its JSON")
    args = p.parse_args()
    if args.part:
        print(json.dumps(PARTS[args.part](args)))
        return
    parts = {}
    for spec in args.reuse:
        name, _, path = spec.partition("=")
        if spec == "reference=none":  # no reference bar (a held-out set): shares of the paper setting only
            parts["reference"] = {"part": "reference", "steps": args.steps, "targets": []}
            continue
        if name not in PARTS or not path:
            raise SystemExit(f"--reuse {spec!r}: expected PART=FILE with PART one of {', '.join(PARTS)}")
        with open(path) as f:
            parts[name] = _load_reference(f.read()) if name == "reference" else json.loads(f.read())
    if "reference" in parts:
        parts["reference"]["steps"] = parts["reference"]["steps"] or args.steps
    if "full" in parts:
        parts["full"].setdefault("steps", args.steps)
    for name in ("reference", "timing", "full", "default"):
        if name not in parts and not (name == "default" and args.skip_default):
            parts[name] = _run_part(args, name, "" if name == "full" else args.config)
    variants = {}
    for spec in args.variant:
        name, _, path = spec.partition("=")
        path, _, rule = path.partition("@")  # FILE@plateau_patience=500: another stopping rule, same run
        with open(path) as f:
            vfull = json.loads(f.read())
        variants[name] = (",".join(filter(None, [vfull.get("config", ""), rule])), vfull)
    print(json.dumps({"model": args.model, "steps": args.steps, "batch": args.batch, "threads": args.threads,
                      "quality": args.quality, **analyse(parts["reference"], parts["timing"], parts["full"],
                                                         parts.get("default"), args.quality, variants),
                      "parts": {k: v for k, v in parts.items() if k != "full"}}, indent=1))


def _load_reference(text: str) -> dict:
    """A reference part's JSON, or the per-target lines it logs (a run stopped early keeps its targets)."""
    text = text.strip()
    if text.startswith("{") and "\n" not in text:
        return json.loads(text)
    rows = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    if "part" in rows[0]:
        return rows[0]
    return {"part": "reference", "steps": None, "targets": rows}


def _run_part(args, name: str, config: str) -> dict:
    cmd = [sys.executable, __file__, "--part", name, "--model", args.model, "--steps", str(args.steps),
           "--prompt-len", str(args.prompt_len), "--batch", str(args.batch), "--ref-targets", str(args.ref_targets),
           "--threads", str(args.threads), "--timing-steps", str(args.timing_steps),
           "--default-targets", str(args.default_targets), "--config", config,
           "--target-offset", str(args.target_offset)]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
