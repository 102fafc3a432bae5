"""Throughput of batched rewriting vs one prompt at a time, on the same small random BLOOM.

    python bench/rewrite_throughput.py [--hidden 256 --layers 4 --prompts 16 --new-tokens 32 --threads 1]

Builds a BLOOM (random weights, byte-level BPE tokenizer trained offline) with pez_core.rewrite.tiny,
loads it through Rewriter.from_pretrained, and rewrites the same prompts with batch sizes 1, 4 and 16.
EOS is suppressed (min_new_tokens = max_new_tokens) so every prompt generates exactly the same number
of tokens whatever the batch. Prints JSON: prompts/s, new tokens/s and the speed-up over batch 1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=256, help="hidden size of the BLOOM")
    ap.add_argument("--layers", type=int, default=4, help="transformer layers")
    ap.add_argument("--heads", type=int, default=8, help="attention heads")
    ap.add_argument("--vocab", type=int, default=2048, help="BPE vocabulary size (capped by the corpus)")
    ap.add_argument("--prompts", type=int, default=16, help="prompts rewritten per measurement")
    ap.add_argument("--new-tokens", type=int, default=32, help="generated tokens per prompt (EOS suppressed)")
    ap.add_argument("--batch-sizes", default="1,4,16", help="comma-separated batch sizes (1 = one at a time)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per batch size (median reported)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is stable on shared machines)")
    args = ap.parse_args()

    import torch

    from pez_core.rewrite.rewriter import GenerationConfig, Rewriter
    from pez_core.rewrite.tiny import build_tiny_lm, tiny_corpus

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny_lm(tmp, arch="bloom", hidden_size=args.hidden, num_layers=args.layers,
                               num_heads=args.heads, vocab_size=args.vocab, init_std=0.3)
        rw = Rewriter.from_pretrained(folder, device="cpu")
    params = sum(p.numel() for p in rw.model.parameters())
    prompts = [p for p in tiny_corpus(seed=7) if len(p) < 60 and "Output" not in p][: args.prompts]
    prompt_tokens = sum(rw.count_tokens([rw.format_all([p], 1)[0] for p in prompts]))

    runs = []
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        cfg = GenerationConfig(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, batch_size=bs)
        rw.rewrite_detailed(prompts[: min(bs, len(prompts))], cfg)  # warm-up
        times, cpu, new_tokens = [], [], 0
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            res = rw.rewrite_detailed(prompts, cfg)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            new_tokens = sum(r.new_tokens for r in res)
        assert new_tokens == len(prompts) * args.new_tokens, "EOS suppression failed: unequal lengths"
        sec = statistics.median(times)
        runs.append({"batch_size": bs, "seconds": round(sec, 4), "prompts_per_s": round(len(prompts) / sec, 2),
                     "new_tokens_per_s": round(new_tokens / sec, 1),
                     "seconds_all_repeats": [round(t, 4) for t in times],
                     "best_seconds": round(min(times), 4), "cpu_seconds_median": round(statistics.median(cpu), 4)})
    base = runs[0]
    for r in runs:
        # wall-clock medians; best-of and CPU-time ratios are less sensitive to other load on the machine
        r["speedup_vs_batch_1"] = round(r["prompts_per_s"] / base["prompts_per_s"], 2)
        r["speedup_best_vs_best"] = round(base["best_seconds"] / r["best_seconds"], 2)
        r["speedup_cpu_time"] = round(base["cpu_seconds_median"] / r["cpu_seconds_median"], 2)
    print(json.dumps({
        "model": {"arch": "bloom", "hidden": args.hidden, "layers": args.layers, "heads": args.heads,
                  "vocab": len(rw.tokenizer), "parameters": params, "weights": "random"},
        "prompts": len(prompts), "prompt_tokens_total": prompt_tokens, "new_tokens_per_prompt": args.new_tokens,
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "runs": runs,
    }, indent=2))


if __name__ == "__main__":
    main()
