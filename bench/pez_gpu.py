"""PEZ on one accelerator: targets/s, images per GPU-hour and the share of the device's peak, by batch and
precision. Prints one JSON document.

    python bench/pez_gpu.py                                   # sd2's ViT-H-14 text tower, random weights, CUDA
    python bench/pez_gpu.py --batches 32,128,512,2048 --precisions fp32,tf32,bf16 --compile
    python bench/pez_gpu.py --model tiny --device cpu --batches 2,4 --precisions fp32,bf16 --steps 3  # the test

The model is the architecture of a preset built with random weights offline (no hub), so only speed is
measured. Targets are random unit feature vectors. Each (precision, batch) runs ``--warmup`` steps, then
``--steps`` timed steps (the device is synchronised only around the timed block); the sweep over batches
stops at the first out-of-memory. Work per prompt-step is counted as 4 x (text transformer parameters)
x (prompt tokens + 2): a forward and an input-gradient backward over the [start, prompt, end] context.
bf16 runs the encoder under autocast with the continuous prompts and AdamW state in fp32.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ARCH = {"sd15": "ViT-L-14", "sd2": "ViT-H-14", "sdxl": "ViT-bigG-14"}
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}  # dense bf16, by device name


def device_peak(device) -> tuple[str, float | None]:
    import torch

    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    return name, next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)


def load(model: str, device: str):
    from pez_core import load_clip

    if model in ARCH:
        return load_clip(ARCH[model], pretrained="random", device=device)
    return load_clip(model, device=device)


def run(clip, vocab, batch: int, precision: str, steps: int, warmup: int, prompt_len: int, compile_: bool) -> dict:
    import torch

    from pez_core import PEZConfig, feature_target, invert

    device = clip.device
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    gen = torch.Generator().manual_seed(batch)
    dim = clip.model.text_projection.shape[-1] if clip.model.text_projection is not None else clip.token_embedding.shape[1]
    targets = [feature_target(torch.randn(dim, generator=gen), seed=i) for i in range(batch)]
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext())
    stamps = []

    def on_step(step, active):
        if step in (warmup - 1, warmup + steps - 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            stamps.append(time.perf_counter())

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    cfg = PEZConfig(prompt_len=prompt_len, steps=warmup + steps, early_stop=False)  # every step timed
    with autocast:
        results = invert(clip, targets, cfg, vocab=vocab,
                         on_step=on_step)
    seconds = stamps[1] - stamps[0]
    per_step = seconds / steps
    params = sum(p.numel() for p in clip.model.transformer.parameters())
    flops = 4 * params * (prompt_len + 2) * batch
    return {
        "precision": precision, "batch": batch, "compile": compile_, "s_per_step": round(per_step, 5),
        "target_steps_per_s": round(batch / per_step, 1),
        "images_per_gpu_hour_at_300_steps": round(3600 * batch / (per_step * 300)),
        "images_per_gpu_hour_at_3000_steps": round(3600 * batch / (per_step * 3000)),
        "gflop_per_prompt_step": float(f"{4 * params * (prompt_len + 2) / 1e9:.4g}"),
        "achieved_tflop_s": float(f"{flops / per_step / 1e12:.4g}"),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2) if device.type == "cuda" else None,
        "mean_best_cosine": round(statistics.mean(r.cosine for r in results), 4),
    }


def main(argv=None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="sd2", help="sd15 | sd2 | sdxl (random weights of that text tower) or a preset")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batches", default="1,8,32,128,512,1024")
    p.add_argument("--precisions", default="fp32,tf32,bf16")
    p.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (allocator, kernels, compile)")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--compile", action="store_true", help="torch.compile the text transformer's blocks")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device; use --device cpu --model tiny for a functional run"}))
        return 2
    from pez_core import Vocabulary

    t0 = time.perf_counter()
    clip = load(args.model, args.device)
    load_s = time.perf_counter() - t0
    if args.compile:
        for block in clip.model.transformer.resblocks:
            block.compile()
    vocab = Vocabulary(clip)
    name, peak = device_peak(clip.device)
    rows = []
    for precision in args.precisions.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            try:
                row = run(clip, vocab, batch, precision, args.steps, args.warmup, args.prompt_len, args.compile)
            except torch.cuda.OutOfMemoryError:
                rows.append({"precision": precision, "batch": batch, "error": "out of memory"})
                torch.cuda.empty_cache()
                break
            if peak:
                row["share_of_bf16_peak"] = round(row["achieved_tflop_s"] / peak, 3)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    best = max((r for r in rows if "error" not in r), key=lambda r: r["target_steps_per_s"], default=None)
    print(json.dumps({"model": args.model, "device": name, "bf16_peak_tflops": peak, "load_seconds": round(load_s, 1),
                      "prompt_len": args.prompt_len, "steps": args.steps, "rows": rows, "best": best}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
