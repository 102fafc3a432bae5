"""``promptmine rewrite``: prompt tables in object storage -> rewritten prompts, by a BeautifulPrompt LM on Ray.

    promptmine rewrite --input s3://bucket/diffusiondb/metadata.parquet --output s3://bucket/rewritten \
        --key-column image_name --rows-per-shard 50000 --actors 8 --gpus-per-actor 1 --address auto
    promptmine rewrite --input prompts.csv --output /tmp/rewritten --model ./my-sft-model --max-new-tokens 64

Each Parquet / CSV / JSON Lines file of the input is one shard, or with --rows-per-shard each run of
Parquet row groups (io/prompt_tables.py); the resumable per-shard machinery (skip done shards, rows +
rejects + done marker, progress, summary) is jobs/shard_job.py's. This module holds the processor (one
Rewriter per actor) and the command line; the generation flags are rewrite/args.py's.

Rows file schema (rows/<shard>.parquet), one row per rewritten input row:
    key string, shard string, raw_prompt string (the input, unchanged), prompt string (the rewrite),
    prompt_tokens int32 (templated input), new_tokens int32 (generated, EOS included), model string,
    template string, mode string, max_new_tokens int32, generation string (JSON of every generation
    setting), seconds float32 (wall seconds of the shard's generation / rows).
(raw_prompt, prompt) is the pair layout of the training data, so the output feeds SFT directly.
Rejects (rejects/<shard>.parquet): key, shard, reason: empty, whitespace-only, overlong or
non-string prompts (Rewriter.problems) and rows that could not be read.
"""

from __future__ import annotations

import json
import logging
import time
import zlib

log = logging.getLogger(__name__)

# Generation settings that decide the text (batch_size only changes speed, so a rerun may change it).
_GENERATION_KEYS = ("max_new_tokens", "min_new_tokens", "mode", "temperature", "top_p", "top_k", "num_beams",
                    "repetition_penalty", "seed")


def row_schema():
    import pyarrow as pa

    return pa.schema([
        ("key", pa.string()), ("shard", pa.string()), ("raw_prompt", pa.string()), ("prompt", pa.string()),
        ("prompt_tokens", pa.int32()), ("new_tokens", pa.int32()), ("model", pa.string()),
        ("template", pa.string()), ("mode", pa.string()), ("max_new_tokens", pa.int32()),
        ("generation", pa.string()), ("seconds", pa.float32()),
    ])


def shard_seed(seed: int | None, shard_id: str) -> int | None:
    """Sampling seed of one shard: a function of the shard only, so a resumed shard is reproducible."""
    return None if seed is None else zlib.crc32(f"{seed}:{shard_id}".encode())


class RewriteProcessor:
    """Loads one Rewriter per actor; rewrites a shard's valid prompts, rejects the others with a reason."""

    def __init__(self, model: str, template: str, generation: dict, threads: int = 0, device: str | None = None,
                 dtype: str | None = None):
        import torch

        from pez_core.rewrite.rewriter import GenerationConfig, Rewriter

        if threads:
            torch.set_num_threads(threads)
        self.gen = GenerationConfig(**generation)
        self.rewriter = Rewriter.from_pretrained(model, template=template, device=device, dtype=dtype)
        self.model, self.template = model, template
        self.settings = json.dumps({k: getattr(self.gen, k) for k in _GENERATION_KEYS}, sort_keys=True)

    def __call__(self, shard_id: str, records: list[dict]) -> tuple[list[dict], list[dict]]:
        from dataclasses import replace

        prompts = [r["prompt"] for r in records]
        reasons = self.rewriter.problems(prompts, self.gen.max_new_tokens)
        rejects = [{"key": r["key"], "reason": "prompt is null" if r["prompt"] is None else why}
                   for r, why in zip(records, reasons) if why]
        good = [r for r, why in zip(records, reasons) if not why]
        if not good:
            return [], rejects
        start = time.monotonic()
        gen = replace(self.gen, seed=shard_seed(self.gen.seed, shard_id)) if self.gen.mode == "sample" else self.gen
        results = self.rewriter.rewrite_detailed([r["prompt"] for r in good], gen)
        per_row = (time.monotonic() - start) / len(good)
        rows = [{"key": rec["key"], "shard": shard_id, "raw_prompt": res.raw_prompt, "prompt": res.text,
                 "prompt_tokens": res.prompt_tokens, "new_tokens": res.new_tokens, "model": self.model,
                 "template": self.template, "mode": self.gen.mode, "max_new_tokens": self.gen.max_new_tokens,
                 "generation": self.settings, "seconds": per_row} for rec, res in zip(good, results)]
        return rows, rejects


# ---- command line ----------------------------------------------------------------------------
def build_job(args):
    import dataclasses
    import functools

    from pez_core.rewrite.rewriter import DEFAULT_MODEL_ID

    from pipelines.io.prompt_tables import find_tables, read_table
    from pipelines.jobs.cli import actor_threads
    from pipelines.jobs.shard_job import ShardJob
    from pipelines.rewrite.args import generation_config

    gen = dataclasses.asdict(generation_config(args))
    model = args.model or DEFAULT_MODEL_ID
    settings = {"model": model, "template": args.template, "prompt_column": args.prompt_column,
                "key_column": args.key_column, "rows_per_shard": args.rows_per_shard,
                **{k: gen[k] for k in _GENERATION_KEYS}}
    threads = actor_threads(args)
    return ShardJob(
        name="rewrite", unit="prompts", processor=RewriteProcessor,
        processor_kwargs={"model": model, "template": args.template, "generation": gen, "threads": threads,
                          "device": args.device, "dtype": args.dtype},
        row_schema=row_schema, settings=settings, reader=read_table,
        reader_kwargs={"prompt_column": args.prompt_column, "key_column": args.key_column},
        find=functools.partial(find_tables, rows_per_shard=args.rows_per_shard),
    )


def _check_paths(args) -> None:
    """Refuse an output inside the input: its Parquet files would be read as input by the next run."""
    from pipelines.cli import CLIError
    from pipelines.io.storage import split_uri

    (s_in, p_in), (s_out, p_out) = split_uri(args.input), split_uri(args.output)
    if s_in == s_out and (p_out == p_in or p_out.startswith(p_in.rstrip("/") + "/")):
        raise CLIError(f"--output {args.output} is inside --input {args.input}: choose an output elsewhere")


def _check_model(model: str, address: str | None) -> None:
    """Fail before Ray starts the actors when they could not load the model: a local folder without
    config.json, or (offline, on this machine's Ray) a Hugging Face id missing from the local cache."""
    import os
    from pathlib import Path

    from pipelines.cli import CLIError

    if model.startswith((".", "/", "~")) or Path(model).expanduser().exists():
        if not (Path(model).expanduser() / "config.json").is_file():
            raise CLIError(f"--model {model}: no config.json there (not a saved causal LM folder)")
    elif not address and os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(model, "config.json"), str):
            raise CLIError(f"--model {model}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set "
                           "(download it first, or give a local folder)")


def cmd_rewrite(args) -> int:
    from pipelines.cli import CLIError
    from pipelines.jobs.cli import run_job

    try:
        _check_paths(args)
        job = build_job(args)
        _check_model(job.settings["model"], args.address)
    except ValueError as e:
        raise CLIError(str(e)) from e
    return run_job(job, args, input_format=args.format)


def register(sub) -> None:
    from pipelines.jobs.cli import add_job_args, add_rows_per_shard
    from pipelines.rewrite.args import add_generation_args

    p = sub.add_parser(
        "rewrite", help="prompt tables in storage -> rewritten prompts by a BeautifulPrompt LM on Ray (resumable)",
        description="Rewrite every prompt of Parquet / CSV / JSON Lines tables (local or s3://; e.g. DiffusionDB "
                    "metadata) with a causal LM on a Ray actor pool, one output file per input file; bad rows "
                    "become rejects with a reason. Rerun the same command to resume. Without --address a local "
                    "Ray is started.")
    p.add_argument("--input", required=True, metavar="URI", help="table file, or folder / s3://bucket/prefix of them")
    p.add_argument("--output", required=True, metavar="URI", help="output folder or s3://bucket/prefix")
    p.add_argument("--format", default="auto", choices=("auto", "parquet", "csv", "jsonl"),
                   help="input format (auto: by extension .parquet, .csv, .jsonl/.ndjson, optionally .gz/.zst)")
    p.add_argument("--prompt-column", default="prompt", help="column / JSON field of the prompts (default: prompt)")
    p.add_argument("--key-column", metavar="KEY",
                   help="column of unique row keys (e.g. image_name); default: <file>:<row index>")
    add_rows_per_shard(p)
    add_generation_args(p, on_workers=True)
    add_job_args(p)
    p.set_defaults(func=cmd_rewrite)
