"""PEZ throughput: batched mode vs the reference (authors') mode, same model, targets and steps.

    python bench/pez_throughput.py --model vit-b-32 --steps 100 --batches 1,8,32,128 --threads 2

Each configuration runs in a fresh subprocess (so peak RSS is its own). Image targets are synthetic
sample images; target i has seed i in both modes. Reference mode is timed on the first
--ref-targets targets (its cost per target does not depend on the batch). Prints one JSON document:
per configuration targets/s, median s/step, peak RSS, mean best cosine, and the mean cosine of the
returned TEXT re-scored by open_clip's own encode_text (the round trip); then speed-ups computed
within this run. Model loading and the one-off candidate-vocabulary build (about 1 s per process,
reported as vocab_seconds) are outside the timed loop.

Achieved GFLOP/s counts the text tower's work per step as 4 x (its transformer's parameters) x
(prompt tokens + 2) x targets: a forward and an input-gradient backward over the [start, prompt, end]
context (the weights are frozen, so no weight gradients), whether or not the encoder skips part of it;
it is printed beside this machine's fp32 matmul rate measured at the same thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

MODELS = {"tiny": ("tiny", None), "vit-b-32": ("ViT-B-32", "random")}


def worker(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from pez_core import PEZConfig, Vocabulary, image_target, invert, invert_reference, load_clip
    from pipelines.io.samples import make_sample_image

    spec, tag = MODELS[args.model]
    clip = load_clip(spec, pretrained=tag, device="cpu")
    n = args.batch if args.mode == "batched" else min(args.batch, args.ref_targets)
    targets = [image_target(clip, [make_sample_image(1000 + i)], seed=i) for i in range(n)]
    cfg = PEZConfig(prompt_len=args.prompt_len, steps=args.steps, projection=args.projection, early_stop=False)
    t0 = time.perf_counter()
    vocab = Vocabulary(clip, projection=cfg.projection) if args.mode == "batched" else None
    vocab_seconds = time.perf_counter() - t0  # once per process (the safe set is cached), like model loading
    stamps = []
    t0 = time.perf_counter()
    if args.mode == "batched":
        results = invert(clip, targets, cfg, vocab=vocab, on_step=lambda s, a: stamps.append(time.perf_counter()))
    else:
        results = invert_reference(clip, targets, cfg, on_step=lambda s, i: stamps.append(time.perf_counter()))
    seconds = time.perf_counter() - t0
    step_times = [b - a for a, b in zip(stamps, stamps[1:])]
    params = sum(p.numel() for p in clip.model.transformer.parameters())
    flops_per_step = 4 * params * (args.prompt_len + 2) * (n if args.mode == "batched" else 1)
    texts = clip.encode_texts([r.text for r in results])
    roundtrip = [float((texts[i] @ t.features.T).mean()) for i, t in enumerate(targets)]
    return {
        "mode": args.mode, "projection": args.projection if args.mode == "batched" else "reference",
        "batch": n, "steps": args.steps, "seconds": round(seconds, 3), "vocab_seconds": round(vocab_seconds, 3),
        "targets_per_s": round(n / seconds, 4),
        "median_s_per_step": round(statistics.median(step_times), 5),
        "gflops_per_step": round(flops_per_step / 1e9, 2),
        "achieved_gflop_s": round(flops_per_step / statistics.median(step_times) / 1e9, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "mean_best_cosine": round(statistics.mean(r.cosine for r in results), 4),
        "mean_roundtrip_cosine": round(statistics.mean(roundtrip), 4),
        "cosines": [round(r.cosine, 4) for r in results],
    }


def matmul_gflop_s(threads: int, n: int = 1024, repeats: int = 20) -> float:
    """This machine's fp32 matmul rate at ``threads`` threads (median of ``repeats`` n x n products)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return round(2 * n ** 3 / statistics.median(times) / 1e9, 1)


def run_one(args, mode, batch, projection="fast") -> dict:
    cmd = [sys.executable, __file__, "--worker", "--mode", mode, "--batch", str(batch), "--model", args.model,
           "--steps", str(args.steps), "--prompt-len", str(args.prompt_len), "--threads", str(args.threads),
           "--ref-targets", str(args.ref_targets), "--projection", projection]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    row = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps({k: v for k, v in row.items() if k != "cosines"}), file=sys.stderr)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default="vit-b-32")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--batches", default="1,8,32,128")
    p.add_argument("--projections", default="fast,exact", help="batched projection modes to measure")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ref-targets", type=int, default=4)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="batched", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--projection", default="fast", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    batches = [int(b) for b in args.batches.split(",")]
    ref = run_one(args, "reference", max(batches))
    rows = [run_one(args, "batched", b, proj) for proj in args.projections.split(",") for b in batches]
    k = len(ref["cosines"])
    for row in rows:
        row["speedup_vs_reference"] = round(row["targets_per_s"] / ref["targets_per_s"], 2)
        # the same first k targets, optimised by both modes from the same seeds
        row["mean_best_cosine_first_k"] = round(statistics.mean(row["cosines"][:k]), 4)
    for row in [ref, *rows]:
        row.pop("cosines")
    peak = matmul_gflop_s(args.threads)
    for row in rows:
        row["share_of_matmul_rate"] = round(row["achieved_gflop_s"] / peak, 3)
    print(json.dumps({"model": args.model, "steps": args.steps, "prompt_len": args.prompt_len,
                      "threads": args.threads, "reference_targets": k, "matmul_fp32_gflop_s": peak,
                      "reference": ref, "batched": rows}, indent=2))


if __name__ == "__main__":
    main()
