"""``promptmine mine``: images in object storage -> image-prompt Parquet, by PEZ on a Ray cluster.

    promptmine mine --input s3://bucket/shards --output s3://bucket/prompts --preset sd2 --actors 8 \
        --gpus-per-actor 1 --address auto
    promptmine mine --demo /tmp/pm-demo        # sample shards -> tiny preset -> first rows, offline

The resumable per-shard machinery is in shard_job.py; this module holds the PEZ processor (one CLIP
per actor, batched ``pez_core.invert``, a seed per key) and the command line.

Rows file schema (rows/<shard>.parquet): key string, shard string, caption string (null if none),
prompt string, token_ids list<int32>, cosine float32, model string, steps int32 (steps run),
best_step int32, seconds float32 (wall seconds of the record's batch / batch size).
"""

from __future__ import annotations

import argparse
import logging
import time
import zlib
from pathlib import Path

log = logging.getLogger(__name__)


def row_schema():
    import pyarrow as pa

    return pa.schema([
        ("key", pa.string()), ("shard", pa.string()), ("caption", pa.string()), ("prompt", pa.string()),
        ("token_ids", pa.list_(pa.int32())), ("cosine", pa.float32()), ("model", pa.string()),
        ("steps", pa.int32()), ("best_step", pa.int32()), ("seconds", pa.float32()),
    ])


def key_seed(key: str, seed: int = 0) -> int:
    """The PEZ seed of one record: a function of its key only, so batching and reruns do not change it."""
    return zlib.crc32(f"{seed}:{key}".encode())


class PEZProcessor:
    """Loads one CLIP and its vocabulary; mines a prompt per record in batches of ``batch_size``."""

    def __init__(self, model: str, pretrained: str | None, pez: dict, batch_size: int, threads: int = 0,
                 device: str | None = None):
        import torch

        from pez_core import PEZConfig, Vocabulary, load_clip

        if threads:
            torch.set_num_threads(threads)
        self.cfg = PEZConfig(**pez)
        self.clip = load_clip(model, pretrained=pretrained, device=device)
        self.vocab = Vocabulary(self.clip, safe=self.cfg.safe_vocab, allow=self.cfg.allow, ban=self.cfg.ban,
                                projection=self.cfg.projection)
        self.batch_size = batch_size

    def __call__(self, shard_id: str, records: list[dict]) -> tuple[list[dict], list[dict]]:
        rows, rejects = [], []
        for i in range(0, len(records), self.batch_size):
            r, j = self.mine_batch(shard_id, records[i: i + self.batch_size])
            rows += r
            rejects += j
        return rows, rejects

    def _decode(self, shard_id, records):
        from pez_core import ImageError

        from pipelines.io.shards import decode_record

        ok, images, rejects = [], [], []
        for rec in records:
            try:
                images.append(decode_record(rec, shard_id))
                ok.append(rec)
            except ImageError as e:
                rejects.append({"key": rec["key"], "reason": e.reason})
        return ok, images, rejects

    def _encode(self, records, images):
        """Image features (b, e); a record whose image fails to encode is isolated and rejected."""
        import torch

        try:
            return records, self.clip.encode_images(images), []
        except Exception:  # noqa: BLE001 -- find the culprit(s) one by one
            keep, feats, rejects = [], [], []
            for rec, im in zip(records, images):
                try:
                    feats.append(self.clip.encode_images([im]))
                    keep.append(rec)
                except Exception as e:  # noqa: BLE001
                    rejects.append({"key": rec["key"], "reason": f"cannot encode image ({type(e).__name__}: {e})"})
            return keep, (torch.cat(feats) if feats else None), rejects

    def mine_batch(self, shard_id: str, records: list[dict]) -> tuple[list[dict], list[dict]]:
        from pez_core import Target, invert

        start = time.monotonic()
        records, images, rejects = self._decode(shard_id, records)
        if not records:
            return [], rejects
        records, feats, more = self._encode(records, images)
        rejects += more
        if not records:
            return [], rejects
        targets = [Target(feats[i: i + 1], "image", key_seed(r["key"], self.cfg.seed)) for i, r in enumerate(records)]
        results = invert(self.clip, targets, self.cfg, vocab=self.vocab)
        per_row = (time.monotonic() - start) / len(records)
        rows = [{"key": rec["key"], "shard": shard_id, "caption": rec.get("caption"), "prompt": res.text,
                 "token_ids": res.token_ids, "cosine": res.cosine, "model": self.clip.name, "steps": res.steps_run,
                 "best_step": res.best_step, "seconds": per_row} for rec, res in zip(records, results)]
        return rows, rejects


# ---- command line ----------------------------------------------------------------------------
def build_job(args):
    from pez_core import PEZConfig

    from pipelines.jobs.cli import actor_threads
    from pipelines.jobs.shard_job import ShardJob

    pez = PEZConfig(prompt_len=args.prompt_len, steps=args.steps, lr=args.lr, seed=args.seed,
                    patience=args.patience, ban=tuple(args.ban), safe_vocab=not args.all_tokens)
    pez_kwargs = {"prompt_len": pez.prompt_len, "steps": pez.steps, "lr": pez.lr, "seed": pez.seed,
                  "patience": pez.patience, "ban": list(pez.ban), "safe_vocab": pez.safe_vocab}
    model = args.model or args.preset
    settings = {"model": model, "pretrained": args.pretrained, **pez_kwargs}
    threads = actor_threads(args)
    return ShardJob(
        name="mine", unit="images", processor=PEZProcessor,
        processor_kwargs={"model": model, "pretrained": args.pretrained, "pez": pez_kwargs,
                          "batch_size": args.batch_size, "threads": threads, "device": args.device},
        row_schema=row_schema, settings=settings,
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
        log.warning("preset 'tiny' has random weights: its prompts mean nothing (use --preset sd15|sd2|sdxl)")
    try:
        job = build_job(args)
    except ValueError as e:
        raise CLIError(str(e)) from e
    return run_job(job, args, input_format=args.format)


def cmd_demo(args) -> int:
    """Write sample shards to DIR/input, mine them to DIR/output with the tiny preset, show rows."""
    import pandas as pd

    from pipelines.io.sample_shards import write_sample_shards

    folder = Path(args.demo)
    write_sample_shards(folder / "input", shards=args.demo_shards, per_shard=args.demo_images)
    print(f"demo: wrote {args.demo_shards} WebDataset shards of {args.demo_images} sample images "
          f"(plus one corrupt and one caption-only record) to {folder / 'input'}")
    args.input, args.output, args.demo, args.demo_run = str(folder / "input"), str(folder / "output"), None, True
    status = cmd_mine(args)
    rows = pd.read_parquet(folder / "output" / "rows")
    rejects = pd.read_parquet(folder / "output" / "rejects")
    with pd.option_context("display.width", 160, "display.max_colwidth", 40):
        print(f"\nfirst rows of {folder / 'output' / 'rows'} ({len(rows)} rows):")
        print(rows[["key", "caption", "prompt", "cosine", "steps", "seconds"]].head(8).to_string(index=False))
        print(f"\nrejects ({len(rejects)}):")
        print(rejects.to_string(index=False))
    return status


def register(sub) -> None:
    from pipelines.jobs.cli import add_job_args
    from pipelines.pez.cli import add_model_args

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
    p.add_argument("--steps", type=int, default=None, help="PEZ steps per image (default 300; demo 60)")
    p.add_argument("--prompt-len", type=int, default=None, help="tokens per prompt (default 16; demo 8)")
    p.add_argument("--lr", type=float, default=0.1, help="AdamW learning rate (paper: 0.1)")
    p.add_argument("--seed", type=int, default=0, help="mixed with each key's CRC32 into its seed")
    p.add_argument("--patience", type=int, help="stop an image after this many steps without improvement")
    p.add_argument("--ban", action="append", default=[], metavar="WORD", help="never use a token containing WORD")
    p.add_argument("--all-tokens", action="store_true", help="search the whole vocabulary, not only safe words")
    p.add_argument("--batch-size", type=int, default=32, help="images optimised together on one actor")
    add_job_args(p, model_noun="CLIP")
    p.add_argument("--demo-shards", type=int, default=3, help=argparse.SUPPRESS)
    p.add_argument("--demo-images", type=int, default=8, help=argparse.SUPPRESS)
    p.set_defaults(func=_defaults_then_run, demo_run=False)


def _defaults_then_run(args) -> int:
    demo = bool(args.demo)
    args.steps = args.steps if args.steps is not None else (60 if demo else 300)
    args.prompt_len = args.prompt_len if args.prompt_len is not None else (8 if demo else 16)
    if demo and args.preset != "tiny" and not args.model:
        log.warning("--demo with preset %s: real weights must be available offline", args.preset)
    return cmd_mine(args)
