"""``promptmine mine``: images in object storage -> image-prompt Parquet, by PEZ on a Ray cluster.

    promptmine mine --input s3://bucket/shards --output s3://bucket/prompts --preset sd2 --actors 8 \
        --gpus-per-actor 1 --address auto
    promptmine mine --demo /tmp/pm-demo        # sample shards -> mined -> first rows, offline

The resumable per-shard machinery is pipelines/jobs/shard_job.py; the processor is mine/processor.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

log = logging.getLogger(__name__)


# PEZ settings added after outputs were mined without them, with the value those outputs ran with
SETTINGS_ADDED = {"method": "pez", "langevin_noise": 0.5, "fluency": 0.0, "prompt_lm": None}


# ---- command line ----------------------------------------------------------------------------
def build_job(args):
    from pipelines.jobs.cli import actor_threads
    from pipelines.jobs.shard_job import ShardJob
    from pipelines.mine.processor import PEZProcessor, row_schema
    from pipelines.pez.args import pez_config

    pez = pez_config(args, demo=args.demo_run)
    if pez.method == "soft":
        raise ValueError("--method soft: a soft prompt has no text, and mining writes image-prompt pairs "
                         "(use `promptmine invert --method soft --json` for its embedding)")
    pez_kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(pez).items()}
    model = args.model or args.preset
    settings = {"model": model, "pretrained": args.pretrained, **pez_kwargs}
    threads = actor_threads(args)
    return ShardJob(
        name="mine", unit="images", processor=PEZProcessor,
        processor_kwargs={"model": model, "pretrained": args.pretrained, "pez": pez_kwargs,
                          "batch_size": args.batch_size, "threads": threads, "device": args.device},
        row_schema=row_schema, settings=settings, setting_defaults=SETTINGS_ADDED,
        reader_kwargs={"image_column": args.image_column},
    )


def cmd_mine(args) -> int:
    from pipelines.cli import CLIError
    from pipelines.jobs.cli import run_job

    if args.demo:
        return cmd_demo(args)
    if not args.input or not args.output:
        raise CLIError("--input and --output are required (or --demo DIR)")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.preset == "tiny" and not args.model and not args.demo_run:
        log.warning("preset 'tiny' has random weights: its prompts mean nothing (use --preset world|sd15|sd2|sdxl)")
    try:
        job = build_job(args)
    except ValueError as e:
        raise CLIError(str(e)) from e
    return run_job(job, args, input_format=args.format)


def cmd_demo(args) -> int:
    """Write sample shards to DIR/input, mine them to DIR/output with the tiny preset, show rows."""
    from pipelines.io.samples import write_sample_shards
    from pipelines.io.storage import Location
    from pipelines.jobs.markers import read_done

    folder = Path(args.demo)
    write_sample_shards(folder / "input", shards=args.demo_shards, per_shard=args.demo_images)
    print(f"demo: wrote {args.demo_shards} WebDataset shards of {args.demo_images} sample images "
          f"(plus one corrupt and one caption-only record) to {folder / 'input'}")
    args.input, args.output, args.demo, args.demo_run = str(folder / "input"), str(folder / "output"), None, True
    status = cmd_mine(args)
    import pandas as pd

    out = Location(str(folder / "output"))
    tables = [read_done(out, kind) for kind in ("rows", "rejects")]  # done shards only
    if tables[0] is None:
        return status
    rows, rejects = (t.to_pandas() for t in tables)
    with pd.option_context("display.width", 160, "display.max_colwidth", 40):
        print(f"\nfirst rows of {folder / 'output' / 'rows'} ({len(rows)} rows):")
        print(rows[["key", "caption", "prompt", "cosine", "steps", "seconds"]].head(8).to_string(index=False))
        print(f"\nrejects ({len(rejects)}):")
        print(rejects.to_string(index=False))
    return status


def register(sub) -> None:
    from pipelines.jobs.cli import add_job_args
    from pipelines.pez.args import add_model_args, add_pez_args

    p = sub.add_parser(
        "mine", help="images in storage -> image-prompt Parquet by PEZ on Ray (resumable)",
        description="Mine a hard prompt per image with PEZ over WebDataset tars, Parquet shards or folders of "
                    "images (local or s3://), one output file per input shard; rerun the same command to "
                    "resume. Without --address a local Ray is started.")
    p.add_argument("--input", metavar="URI", help="folder or s3://bucket/prefix of shards (or one shard)")
    p.add_argument("--output", metavar="URI", help="output folder or s3://bucket/prefix")
    p.add_argument("--demo", metavar="DIR", help="write sample shards to DIR/input, mine them to DIR/output "
                                                 "with the tiny preset, print the first rows")
    p.add_argument("--format", default="auto", choices=("auto", "webdataset", "parquet", "folder"),
                   help="input format (auto: .tar -> WebDataset, .parquet -> Parquet, image files -> folder)")
    p.add_argument("--image-column", help="Parquet column of image bytes (default: jpg/png/webp/image/...)")
    add_model_args(p)
    add_pez_args(p, "mine", demo="demo")
    p.add_argument("--batch-size", type=int, default=32, help="images optimised together on one actor")
    add_job_args(p, model_noun="CLIP")
    p.add_argument("--demo-shards", type=int, default=3, help=argparse.SUPPRESS)
    p.add_argument("--demo-images", type=int, default=8, help=argparse.SUPPRESS)
    p.set_defaults(func=_defaults_then_run, demo_run=False)


def _defaults_then_run(args) -> int:
    if args.demo and args.preset not in ("tiny", "world") and not args.model:
        log.warning("--demo with preset %s: real weights must be available offline", args.preset)
    return cmd_mine(args)
