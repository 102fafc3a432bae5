"""Throughput of `promptmine mine` (Ray Data + actor pool) vs pez_core.invert called directly.

The same images (WebDataset shards written to a temporary folder), the same PEZ settings and the
same per-key seeds, torch with one thread per worker. Prints JSON:

- direct: one process decodes, encodes and runs ``invert`` in batches (model load timed apart)
- pipeline_{n}_actors: the real job (run_shard_job) on a local Ray started once beforehand:
  ``end_to_end`` includes actor start and model load (what a user waits for, minus ``ray.init``);
  ``steady`` runs from the first shard's processing start to the last shard's end
- overhead = 1 - pipeline images/s / direct images/s (end_to_end counts the direct model load too)

    python bench/mine_throughput.py --images 256 --steps 200 --prompt-len 8
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import datetime
from pathlib import Path


def direct(folder: Path, args) -> dict:
    import torch

    from pez_core import PEZConfig, Target, Vocabulary, invert, load_clip
    from pipelines.mine.cli import key_seed
    from pipelines.io.shards import decode_record, find_shards, read_shard
    from pipelines.io.storage import Location

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    clip = load_clip(args.preset, device="cpu")
    cfg = PEZConfig(steps=args.steps, prompt_len=args.prompt_len, early_stop=False)  # fixed work per image
    vocab = Vocabulary(clip, safe=cfg.safe_vocab, projection=cfg.projection)
    t1 = time.perf_counter()
    records = [r for s in find_shards(Location(str(folder))) for r in read_shard(s, Location(s.uri))]
    n = 0
    for i in range(0, len(records), args.batch_size):
        batch = records[i: i + args.batch_size]
        feats = clip.encode_images([decode_record(r) for r in batch])
        targets = [Target(feats[j: j + 1], "image", key_seed(r["key"])) for j, r in enumerate(batch)]
        n += len(invert(clip, targets, cfg, vocab=vocab))
    t2 = time.perf_counter()
    return {"images": n, "load_seconds": round(t1 - t0, 2), "mine_seconds": round(t2 - t1, 2),
            "images_per_s": round(n / (t2 - t1), 3), "images_per_s_with_load": round(n / (t2 - t0), 3)}


def pipeline(folder: Path, out: Path, actors: int, args) -> dict:
    from pipelines.mine.cli import PEZProcessor, row_schema
    from pipelines.jobs.shard_job import ShardJob, ShardJobConfig, done_shards, run_shard_job
    from pipelines.io.storage import StorageOptions

    pez = {"steps": args.steps, "prompt_len": args.prompt_len}
    job = ShardJob(name="mine", unit="images", processor=PEZProcessor, row_schema=row_schema, settings=pez,
                   processor_kwargs={"model": args.preset, "pretrained": None, "pez": pez,
                                     "batch_size": args.batch_size, "threads": 1})
    cfg = ShardJobConfig(input_uri=str(folder), output_uri=str(out), actors=actors, cpus_per_actor=0.5,
                         progress_interval=1e9)
    options = StorageOptions()
    t0 = time.perf_counter()
    summary = run_shard_job(job, cfg, options, echo=lambda *a: None)
    wall = time.perf_counter() - t0
    stats = done_shards(options.resolve(str(out))).values()
    ends = [datetime.fromisoformat(s["finished_at"]).timestamp() for s in stats]
    starts = [e - s["process_seconds"] for e, s in zip(ends, stats)]
    steady = max(ends) - min(starts)
    n = summary["totals"]["rows"]
    return {"actors": actors, "images": n, "rejects": summary["totals"]["rejects"], "wall_seconds": round(wall, 2),
            "images_per_s_end_to_end": round(n / wall, 3), "steady_seconds": round(steady, 2),
            "images_per_s_steady": round(n / steady, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--prompt-len", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

    from pipelines.io.samples import write_sample_shards

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        write_sample_shards(folder, shards=args.shards, per_shard=args.images // args.shards, bad_shard=None,
                            size=224)
        result = {"images": args.images, "shards": args.shards, "steps": args.steps, "prompt_len": args.prompt_len,
                  "batch_size": args.batch_size, "preset": args.preset, "cpus": os.cpu_count(),
                  "direct": direct(folder, args)}
        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        result["ray_init_seconds"] = round(time.perf_counter() - t0, 2)
        try:
            d = result["direct"]
            for n in args.actors:
                r = pipeline(folder, Path(tmp) / f"out{n}", n, args)
                r["overhead_end_to_end"] = round(1 - r["images_per_s_end_to_end"] / d["images_per_s_with_load"], 3)
                r["overhead_steady"] = round(1 - r["images_per_s_steady"] / d["images_per_s"], 3)
                result[f"pipeline_{n}_actors"] = r
        finally:
            ray.shutdown()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
