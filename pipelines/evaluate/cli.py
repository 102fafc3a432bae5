"""``promptmine eval invert|rewrite`` and ``promptmine label``: score prompts by the images they produce.

    promptmine eval invert --input s3://b/mined --images s3://b/shards --output s3://b/eval-pez \
        --baseline-column caption --actors 8 --gpus-per-actor 1 --address auto
    promptmine eval rewrite --input s3://b/rewritten.parquet --output s3://b/eval-bp --aesthetic-weights sac.pth
    promptmine label --input s3://b/pairs --output s3://b/labelled --aesthetic-weights sac.pth
    promptmine train reward --data s3://b/labelled/rows ...

Each job runs on the resumable shard machinery of ``mine`` (shard_job.py): one Parquet input file is
one shard (eval rewrite and label: with --rows-per-shard N, each run of its row groups of about N rows),
rows/ rejects/ stats/ per shard, a rerun skips finished shards and refuses other settings.
After the shards, the job reads its rows back and writes ``metrics.json`` (means with 95% confidence
intervals; also added to summary.json) and prints it. The defaults are the papers' models:
PEZ: SD 2.1-base, guidance 9, 25 steps, 5 seeds, reference CLIP ViT-g-14; BeautifulPrompt: SD 1.5,
20 steps, PickScore_v1, the LAION aesthetic predictor on ViT-L/14 (its weights file must be given).
"""

from __future__ import annotations

import functools
import json
import logging

from pipelines.jobs.cli import actor_threads, add_rows_per_shard, storage_options

log = logging.getLogger(__name__)

TABLE_HELP = "Parquet file, folder of Parquet files (one shard each), or a job output folder (its rows/)"


# ---- running -----------------------------------------------------------------------------------------
def run_eval_job(job, args, metrics_fn, echo=print) -> int:
    """Run (or resume) a shard job, then compute metrics over all its rows; exit status 0 iff complete."""
    from pipelines.jobs.cli import run_job

    def write_metrics(summary: dict) -> None:
        if not summary["totals"]["rows"]:
            return
        from pipelines.jobs.markers import read_done

        out = storage_options(args).resolve(args.output)
        columns = [c for c in job.row_schema().names if not c.endswith("image")]
        df = read_done(out, "rows", columns=columns).to_pandas()  # done shards only
        summary["metrics"] = metrics_fn(df)
        out.child("metrics.json").write_text(json.dumps(summary["metrics"], indent=1))
        out.child("summary.json").write_text(json.dumps(summary, indent=1))
        echo(format_metrics(summary["metrics"]))

    return run_job(job, args, input_format="parquet", after=write_metrics, echo=echo)


def format_metrics(metrics: dict, prefix: str = "") -> str:
    """Nested metrics -> aligned lines 'name  mean [lo, hi] (n=..)'."""
    from pipelines.evaluate.stats import format_ci

    lines = [] if prefix else ["metrics (mean [95% CI]):"]
    for name, value in metrics.items():
        if isinstance(value, dict) and "mean" in value:
            extra = f"  win rate {value['win_rate']:.2f}" if value.get("win_rate") is not None else ""
            lines.append(f"  {prefix + name:<44} {format_ci(value)}{extra}")
        elif isinstance(value, dict):
            lines.append(format_metrics(value, f"{prefix}{name}."))
    return "\n".join(lines)


def _check_columns(args, needed: list[str], find) -> None:
    from pipelines.cli import CLIError
    from pipelines.io.parquet import column_names

    root = storage_options(args).resolve(args.input)
    first = find(root, "parquet")[0]
    names = column_names(first.uri, root.options.resolve(first.uri))
    missing = [c for c in needed if c not in names]
    if missing:
        raise CLIError(f"{args.input}: no column(s) {', '.join(missing)} (columns: {', '.join(names)})")


# ---- eval invert -------------------------------------------------------------------------------------
def cmd_invert(args) -> int:
    from pipelines.cli import CLIError
    from pipelines.io.prompt_tables import find_tables
    from pipelines.evaluate.invert import InvertEvalProcessor, image_shards, metrics, read_mined, schema_for
    from pipelines.jobs.shard_job import ShardJob

    baselines = list(dict.fromkeys(args.baseline_column))
    bad = [b for b in baselines if b in ("key", "shard", "prompt", "seconds", "image", "target_image")
           or b == args.prompt_column]
    if bad:
        raise CLIError(f"--baseline-column {bad[0]!r} clashes with an output column; rename it")
    try:
        generation = generation_settings(args)
        _check_columns(args, [args.prompt_column, *baselines], find_tables)
        images = image_shards(storage_options(args).resolve(args.images))
    except ValueError as e:
        raise CLIError(str(e)) from e
    seeds = list(range(args.seed, args.seed + args.seeds))
    settings = {"generation": generation, "reference_clip": args.reference_clip, "seeds": seeds,
                "prompt_column": args.prompt_column, "baselines": baselines, "images": args.images}
    job = ShardJob(
        name="eval-invert", unit="prompts", processor=InvertEvalProcessor,
        processor_kwargs={"generation": generation, "reference_clip": args.reference_clip, "seeds": seeds,
                          "prompt_column": args.prompt_column, "baselines": baselines,
                          "batch_rows": args.batch_rows, "threads": actor_threads(args), "device": args.device},
        row_schema=schema_for(tuple(baselines)), settings=settings, reader=read_mined,
        reader_kwargs={"images": images, "prompt_column": args.prompt_column, "baselines": baselines,
                       "image_column": args.image_column},
        find=find_tables)
    return run_eval_job(job, args, lambda df: metrics(df, baselines))


# ---- eval rewrite and label --------------------------------------------------------------------------
def _scorer_kwargs(args, clip: str | None) -> dict:
    from pipelines.cli import CLIError

    if not args.aesthetic_weights:
        raise CLIError("--aesthetic-weights PATH is required: the LAION predictor's weights file "
                       "(sac+logos+ava1-l14-linearMSE.pth from christophschuhmann/improved-aesthetic-predictor)")
    from pez_core.scoring.aesthetic import AestheticWeightsError, load_aesthetic_mlp

    try:  # fail on the driver, before any actor starts (the widths are checked again against the CLIP)
        load_aesthetic_mlp(args.aesthetic_weights)
    except AestheticWeightsError as e:
        raise CLIError(str(e)) from e
    return {"pickscore": args.pickscore, "pickscore_processor": args.pickscore_processor,
            "aesthetic_weights": args.aesthetic_weights, "aesthetic_clip": args.aesthetic_clip, "clip": clip}


def _table_job(args, name: str, processor, schema, extra: dict, clip: str | None):
    from pipelines.cli import CLIError
    from pipelines.io.prompt_tables import find_tables, read_columns
    from pipelines.jobs.shard_job import ShardJob

    try:
        generation = generation_settings(args)
        _check_columns(args, [args.raw_column, args.prompt_column], find_tables)
    except ValueError as e:
        raise CLIError(str(e)) from e
    seeds = list(range(args.seed, args.seed + args.seeds))
    scorer = {**_scorer_kwargs(args, clip), "generation": generation, "seeds": seeds,
              "threads": actor_threads(args), "device": args.device}
    settings = {k: v for k, v in scorer.items() if k not in ("threads", "device")}
    settings.update({"raw_column": args.raw_column, "prompt_column": args.prompt_column,
                     "rows_per_shard": args.rows_per_shard, **extra})
    return ShardJob(
        name=name, unit="prompts", processor=processor,
        processor_kwargs={"scorer": scorer, "raw_column": args.raw_column, "prompt_column": args.prompt_column,
                          "batch_rows": args.batch_rows, **extra},
        row_schema=schema, settings=settings, reader=read_columns,
        reader_kwargs={"text_columns": [args.raw_column, args.prompt_column]},
        find=functools.partial(find_tables, rows_per_shard=args.rows_per_shard),
        setting_defaults={"rows_per_shard": 0})  # outputs from before the flag resume unsplit


def cmd_rewrite(args) -> int:
    from pipelines.evaluate.rewrite import RewriteEvalProcessor, rewrite_metrics, rewrite_schema

    job = _table_job(args, "eval-rewrite", RewriteEvalProcessor, rewrite_schema, {}, args.clip_score_model)
    return run_eval_job(job, args, rewrite_metrics)


def cmd_label(args) -> int:
    from pipelines.evaluate.label import LabelProcessor, label_metrics, label_schema

    job = _table_job(args, "label", LabelProcessor, label_schema, {"judge": args.judge}, None)
    status = run_eval_job(job, args, label_metrics)
    if status == 0:
        print(f"reward-model data: promptmine train reward --data {args.output.rstrip('/')}/rows ...")
    return status


# ---- command line ------------------------------------------------------------------------------------
def add_generation_args(p, model: str, steps: int, guidance: float, size: int | None, seeds: int) -> None:
    g = p.add_argument_group("generation (diffusers)")
    g.add_argument("--generator", default=model, metavar="ID_OR_PATH",
                   help=f"text-to-image model id or save_pretrained folder: SD 1.x, SD 2.x or SDXL; `world`: "
                        f"promptmine's world renderer (default {model})")
    g.add_argument("--steps", type=int, default=steps, help=f"denoising steps (default {steps})")
    g.add_argument("--guidance", type=float, default=guidance, help=f"classifier-free guidance (default {guidance})")
    g.add_argument("--size", type=int, default=size, help="image side in pixels (default: the model's own)")
    g.add_argument("--negative-prompt", help="one negative prompt for every image")
    g.add_argument("--seeds", type=int, default=seeds,
                   help=f"images per prompt, seeds SEED..SEED+N-1 (default {seeds})")
    g.add_argument("--seed", type=int, default=0, help="first seed (the same seeds for every row and column)")
    g.add_argument("--gen-batch-size", type=int, default=4, help="images per diffusion call")
    g.add_argument("--dtype", default="auto", choices=("auto", "fp16", "bf16", "fp32"),
                   help="pipeline dtype (auto: fp16 on GPU, fp32 on CPU)")


def generation_settings(args) -> dict:
    """The GenerationConfig fields from the flags (validated by GenerationConfig itself)."""
    from pez_core.scoring import GenerationConfig

    cfg = GenerationConfig(model=args.generator, steps=args.steps, guidance=args.guidance, size=args.size,
                           negative_prompt=args.negative_prompt, batch_size=args.gen_batch_size, dtype=args.dtype)
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    fields = ("model", "steps", "guidance", "size", "negative_prompt", "batch_size", "dtype")
    return {k: getattr(cfg, k) for k in fields}


def _io_args(p, input_help: str) -> None:
    p.add_argument("--input", required=True, metavar="URI", help=input_help)
    p.add_argument("--output", required=True, metavar="URI", help="output folder or s3://bucket/prefix")
    p.add_argument("--batch-rows", type=int, default=4, help="rows scored together on one actor")


def _bp_scorer_args(p) -> None:
    from pez_core.scoring.defaults import DEFAULT_AESTHETIC_CLIP
    from pez_core.scoring.defaults import DEFAULT_PICKSCORE, DEFAULT_PICKSCORE_PROCESSOR

    s = p.add_argument_group("scorers")
    s.add_argument("--pickscore", default=DEFAULT_PICKSCORE, metavar="ID_OR_PATH",
                   help=f"PickScore CLIPModel (transformers) (default {DEFAULT_PICKSCORE}); a CLIP preset "
                        "(world-ref) or clip:SPEC gives the stand-in logit_scale * cos of that open_clip model")
    s.add_argument("--pickscore-processor", default=DEFAULT_PICKSCORE_PROCESSOR, metavar="ID_OR_PATH",
                   help=f"its processor (default {DEFAULT_PICKSCORE_PROCESSOR})")
    s.add_argument("--aesthetic-weights", metavar="PATH",
                   help="LAION aesthetic MLP weights file (.pth or .safetensors; required); `world`: the shipped "
                        "world aesthetic stand-in (with --aesthetic-clip world)")
    s.add_argument("--aesthetic-clip", default=DEFAULT_AESTHETIC_CLIP, metavar="CLIP",
                   help=f"CLIP under the aesthetic MLP: name/tag, preset or folder (default {DEFAULT_AESTHETIC_CLIP})")
    p.add_argument("--raw-column", default="raw_prompt", help="column of the raw (user) prompt")
    p.add_argument("--prompt-column", default="prompt", help="column of the rewritten / high-quality prompt")


def register(sub) -> None:
    from pez_core.scoring.defaults import DEFAULT_CLIP_SCORE_MODEL, DEFAULT_REFERENCE_CLIP
    from pez_core.scoring.defaults import BEAUTIFULPROMPT_GENERATOR, PEZ_GENERATOR

    from pipelines.jobs.cli import add_job_args

    ev = sub.add_parser("eval", help="score prompts by the images they produce (PEZ / BeautifulPrompt protocols)",
                        description="Evaluation jobs on Ray Data (resumable, per-shard output, metrics.json).")
    evsub = ev.add_subparsers(dest="eval_command", metavar="KIND", required=True)

    inv = evsub.add_parser(
        "invert", help="PEZ protocol: mined prompts -> images over N seeds -> reference-CLIP similarity to targets",
        description="For each mined prompt (and each --baseline-column), generate --seeds images and score the "
                    "reference CLIP's cosine to the row's target image, found by shard id and key in --images.")
    _io_args(inv, "mined prompts: a `promptmine mine` output folder (or Parquet with key + prompt columns)")
    inv.add_argument("--images", required=True, metavar="URI", help="the image shards the prompts were mined from")
    inv.add_argument("--image-column", help="Parquet image-bytes column of the image shards (default: auto)")
    inv.add_argument("--prompt-column", default="prompt", help="column of the prompt to evaluate")
    inv.add_argument("--baseline-column", action="append", default=[], metavar="COLUMN",
                     help="another prompt column scored the same way (e.g. caption); repeatable")
    inv.add_argument("--reference-clip", default=DEFAULT_REFERENCE_CLIP, metavar="CLIP",
                     help=f"reference CLIP: open_clip name/tag, preset or folder (default {DEFAULT_REFERENCE_CLIP})")
    add_generation_args(inv, PEZ_GENERATOR, steps=25, guidance=9.0, size=None, seeds=5)
    add_job_args(inv, model_noun="set of models", device=True)
    inv.set_defaults(func=cmd_invert)

    rw = evsub.add_parser(
        "rewrite", help="BeautifulPrompt protocol: raw vs rewritten prompt -> PickScore, aesthetic, CLIP score",
        description="Generate images from the raw and the rewritten prompt with the same seeds and score both "
                    "against the RAW prompt: PickScore, LAION aesthetic score, CLIP score.")
    _io_args(rw, f"prompt pairs: {TABLE_HELP}")
    _bp_scorer_args(rw)
    add_rows_per_shard(rw)
    rw.add_argument("--clip-score-model", default=DEFAULT_CLIP_SCORE_MODEL, metavar="CLIP",
                    help=f"CLIP for the text-image CLIP score (default {DEFAULT_CLIP_SCORE_MODEL})")
    add_generation_args(rw, BEAUTIFULPROMPT_GENERATOR, steps=20, guidance=7.5, size=None, seeds=1)
    add_job_args(rw, model_noun="set of models", device=True)
    rw.set_defaults(func=cmd_rewrite)

    lb = sub.add_parser(
        "label", help="pick_score + aesthetic_score labels for prompt pairs (reward-model data, Ray)",
        description="For each (raw_prompt, prompt) pair, generate --seeds images from the prompt and average "
                    "PickScore (against the raw prompt) and the aesthetic score: the columns "
                    "`promptmine train reward --data OUTPUT/rows` reads.")
    _io_args(lb, f"prompt pairs: {TABLE_HELP}")
    _bp_scorer_args(lb)
    add_rows_per_shard(lb)
    lb.add_argument("--judge", choices=("raw", "prompt"), default="raw",
                    help="text PickScore compares each image with (BeautifulPrompt: the raw prompt)")
    add_generation_args(lb, BEAUTIFULPROMPT_GENERATOR, steps=20, guidance=7.5, size=None, seeds=8)
    add_job_args(lb, model_noun="set of models", device=True)
    lb.set_defaults(func=cmd_label)
