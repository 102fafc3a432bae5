"""Single-machine BeautifulPrompt subcommands: ``pairs`` (make training pairs) and ``rewrite-text``.

The Ray Data batch job over prompt tables is ``promptmine rewrite`` (another module).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def register(subparsers) -> None:
    _register_pairs(subparsers)
    _register_rewrite_text(subparsers)


# --- pairs ------------------------------------------------------------------------------------------

def _register_pairs(subparsers) -> None:
    p = subparsers.add_parser(
        "pairs", help="make (raw_prompt, prompt) training pairs from a prompt table",
        description="Split prompts into low / high quality, pair each high-quality prompt with a short "
                    "summary (rule-based or an OpenAI-compatible LLM) and/or a caption of its image, and/or "
                    "pair each low-quality prompt with an LLM's expansion of it (--expander llm), clean "
                    "the pairs and write them as Parquet (raw_prompt, prompt, source, score columns).")
    p.add_argument("--input", type=Path,
                   help="Parquet / CSV / JSONL file, or a folder of them (e.g. DiffusionDB metadata.parquet); "
                        "required unless --source world")
    p.add_argument("--output", required=True, type=Path, help="Parquet file to write the pairs to")
    p.add_argument("--rejects", type=Path, help="also write dropped rows with their reason to this Parquet file")
    p.add_argument("--prompt-column", default="prompt", help="column holding the prompts (default: prompt)")
    p.add_argument("--limit", type=int, help="use at most N distinct high-quality prompts")
    p.add_argument("--batch-size", type=int, default=64, help="prompts / images per summariser / captioner call")
    g = p.add_argument_group("world pairs (--source world: promptmine's world, no input table)")
    g.add_argument("--source", choices=("table", "world"), default="table",
                   help="table: pairs from --input (default); world: COUNT pairs of a short world prompt ('a star') "
                        "and a detailed caption of the same scene with style and quality words")
    g.add_argument("--count", type=int, default=2000, help="world: pairs generated before the hold-out (2000)")
    g.add_argument("--seed", type=int, default=0, help="world: seed of the scenes")
    g.add_argument("--bad", type=float, default=0.0,
                   help="world: share of failed prompts, a third each: the object in the background's colour, another "
                        "shape, or another value of an attribute the raw prompt names; "
                        "they teach the reward models, `train sft --min-pick-score` filters them (default 0; 1: a "
                        "table of failures only, for `train reward --data`)")
    g.add_argument("--expansions", type=float, default=0.0,
                   help="world: share of the good one-object pairs whose prompt keeps the raw prompt word for word "
                        "and adds what it leaves unsaid ('a red star, large, blue background, striped, sharp'), as "
                        "an LLM expansion does (source world-expansion; default 0: every prompt a fresh caption)")
    g.add_argument("--holdout", type=int, default=0,
                   help="world: distinct raw prompts held out: their pairs are left out of --output and the "
                        "prompts written to --holdout-output (for `eval rewrite`; default 0)")
    g.add_argument("--holdout-output", type=Path, help="world: Parquet file of the held-out raw prompts (key, "
                                                       "raw_prompt, prompt = one of their captions)")
    g = p.add_argument_group("summaries")
    g.add_argument("--summariser", choices=("rule", "llm", "none"), default="rule",
                   help="rule: drop modifiers and weights, keep the subject (default); llm: an OpenAI-compatible "
                        "endpoint; none: no summary pairs")
    g.add_argument("--max-words", type=int, default=12, help="longest summary in words (default 12)")
    g.add_argument("--llm-url", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 "
                                     "(default: $OPENAI_BASE_URL)")
    g.add_argument("--llm-model", default="gpt-4o-mini", help="model name sent to the endpoint")
    g.add_argument("--llm-api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the API key (never printed or logged)")
    g.add_argument("--llm-timeout", type=float, default=30.0, help="seconds per request")
    g.add_argument("--llm-retries", type=int, default=2, help="retries on timeouts, 429 and 5xx")
    g.add_argument("--llm-concurrency", type=int, default=4, help="requests in flight")
    g.add_argument("--llm-skip-errors", action="store_true",
                   help="drop a prompt whose request fails after retries instead of stopping")
    g = p.add_argument_group("expansions (the paper's third source; uses the --llm-* endpoint settings)")
    g.add_argument("--expander", choices=("none", "llm"), default="none",
                   help="llm: expand each distinct low-quality prompt into a high-quality one with the "
                        "OpenAI-compatible endpoint (source=expansion); none: no expansion pairs (default)")
    g.add_argument("--expand-max-tokens", type=int, default=256, help="answer budget per expansion (256)")
    g = p.add_argument_group("captions")
    g.add_argument("--captioner", choices=("none", "blip"), default="none",
                   help="blip: caption each high-quality prompt's image with BLIP (transformers)")
    g.add_argument("--blip-model", default=None, help="BLIP id or folder (default: Salesforce/blip-image-captioning-base)")
    g.add_argument("--image-column", default="image",
                   help="column with image bytes or paths (DiffusionDB metadata: image_name)")
    g.add_argument("--image-root", help="folder that relative image paths start from")
    g.add_argument("--device", help="torch device for the captioner")
    g = p.add_argument_group("quality split and cleaning")
    g.add_argument("--low-max-chars", type=int, default=60, help="longest low-quality prompt (default 60)")
    g.add_argument("--high-min-chars", type=int, default=80, help="shortest high-quality prompt (default 80)")
    g.add_argument("--high-min-signals", type=int, default=3,
                   help="style modifiers + weighted phrases a high-quality prompt needs (default 3)")
    g.add_argument("--min-raw-chars", type=int, default=3, help="shortest raw_prompt kept")
    g.add_argument("--max-raw-chars", type=int, default=150, help="longest raw_prompt kept")
    g.add_argument("--min-prompt-chars", type=int, default=20, help="shortest prompt kept")
    g.add_argument("--max-prompt-chars", type=int, default=1000, help="longest prompt kept")
    g.add_argument("--keep-non-english", action="store_true", help="do not drop non-English rows")
    g.add_argument("--no-nsfw-filter", action="store_true", help="do not drop rows matching the NSFW word list")
    g.add_argument("--blocklist", type=Path, help="file of extra words / phrases to drop (one per line)")
    g.add_argument("--max-nsfw-score", type=float, default=0.5,
                   help="drop input rows whose prompt_nsfw / image_nsfw column is above this (DiffusionDB)")
    g.add_argument("--min-pick-score", type=float, help="drop pairs below this pick_score (paper's SFT: 18.5)")
    g.add_argument("--min-aesthetic-score", type=float, help="drop pairs below this aesthetic_score")
    g.add_argument("--no-dedupe", action="store_true", help="keep duplicate pairs")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run_pairs)


def _pair_config(args):
    from pez_core.rewrite.clean import CleanConfig, load_word_list
    from pez_core.rewrite.data import PairConfig
    from pez_core.rewrite.quality import QualityConfig

    blocklist = load_word_list(args.blocklist) if args.blocklist else frozenset()
    return PairConfig(
        prompt_column=args.prompt_column, summarise=args.summariser != "none", caption=args.captioner != "none",
        expand=args.expander != "none",
        image_column=args.image_column, image_root=args.image_root, max_nsfw_score=args.max_nsfw_score,
        limit=args.limit, batch_size=args.batch_size,
        quality=QualityConfig(low_max_chars=args.low_max_chars, high_min_chars=args.high_min_chars,
                              high_min_signals=args.high_min_signals),
        clean=CleanConfig(min_raw_chars=args.min_raw_chars, max_raw_chars=args.max_raw_chars,
                          min_prompt_chars=args.min_prompt_chars, max_prompt_chars=args.max_prompt_chars,
                          english_only=not args.keep_non_english, nsfw_filter=not args.no_nsfw_filter,
                          extra_blocklist=blocklist, min_pick_score=args.min_pick_score,
                          min_aesthetic_score=args.min_aesthetic_score, dedupe=not args.no_dedupe),
    )


def _summariser(args):
    from pez_core.rewrite.summarise import LLMConfig, LLMSummariser, RuleSummariser

    if args.summariser == "rule":
        return RuleSummariser(max_words=args.max_words)
    if args.summariser == "llm":
        return LLMSummariser(LLMConfig(max_words=args.max_words, **_llm_kwargs(args)))
    return None


def _llm_kwargs(args) -> dict:
    return dict(base_url=args.llm_url or "", model=args.llm_model, api_key_env=args.llm_api_key_env,
                timeout_s=args.llm_timeout, retries=args.llm_retries, concurrency=args.llm_concurrency,
                on_error="skip" if args.llm_skip_errors else "raise")


def _expander(args):
    from pez_core.rewrite.summarise import LLMExpander, expander_config

    if args.expander == "llm":
        return LLMExpander(expander_config(max_tokens=args.expand_max_tokens, **_llm_kwargs(args)))
    return None


def run_world_pairs(args) -> int:
    from pez_core.rewrite.data import write_pairs
    from pez_core.world.prompts import split_holdout, world_pairs

    from pipelines.cli import CLIError

    if args.input is not None:
        raise CLIError("--source world makes its own prompts: drop --input")
    if args.holdout and not args.holdout_output:
        raise CLIError("--holdout N needs --holdout-output FILE for the held-out prompts")
    t0 = time.perf_counter()
    try:
        made = world_pairs(args.count, args.seed, args.bad, args.expansions)
        pairs, held = split_holdout(made, args.holdout, args.seed)
    except ValueError as e:
        raise CLIError(str(e)) from e
    import pandas as pd

    write_pairs(pd.DataFrame(pairs), args.output)
    if args.holdout_output:
        write_pairs(pd.DataFrame(held), args.holdout_output)
    elapsed = time.perf_counter() - t0
    summary = {"source": "world", "generated": args.count, "written": len(pairs), "output": str(args.output),
               "distinct_raw_prompts": len({p["raw_prompt"] for p in pairs}), "holdout": len(held),
               "holdout_output": str(args.holdout_output) if args.holdout_output else None,
               "seconds": round(elapsed, 3)}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"world: {args.count} pairs generated, {len(held)} raw prompts held out; wrote {len(pairs)} pairs "
              f"({summary['distinct_raw_prompts']} distinct raw prompts) to {args.output}"
              + (f" and {len(held)} held-out prompts to {args.holdout_output}" if args.holdout_output else "")
              + f" in {elapsed:.2f} s")
    return 0


def run_pairs(args) -> int:
    from tqdm import tqdm

    from pez_core.rewrite.caption import BlipCaptioner, BlipConfig
    from pez_core.rewrite.data import build_pairs, read_prompt_table, write_pairs
    from pez_core.rewrite.summarise import SummariserError

    from pipelines.cli import CLIError

    if args.source == "world":
        return run_world_pairs(args)
    if args.input is None:
        raise CLIError("--input is required (or --source world)")
    t0 = time.perf_counter()
    try:
        cfg = _pair_config(args)
        table = read_prompt_table(args.input)
        summariser = _summariser(args)
        expander = _expander(args)
        captioner = None
        if args.captioner == "blip":
            blip = BlipConfig(device=args.device, batch_size=min(args.batch_size, 64))
            if args.blip_model:
                blip.model = args.blip_model
            captioner = BlipCaptioner(blip)
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(str(e)) from e
    bar = tqdm(total=0, unit="prompt", desc="pairs", disable=args.json or not sys.stderr.isatty())
    try:
        result = build_pairs(table, cfg, summariser=summariser, captioner=captioner, expander=expander,
                             on_progress=lambda stage, n: bar.update(n))
    except (ValueError, SummariserError) as e:
        raise CLIError(str(e)) from e
    finally:
        bar.close()
        for client in (summariser, expander):
            if hasattr(client, "close"):
                client.close()
    write_pairs(result.pairs, args.output)
    if args.rejects:
        write_pairs(result.rejects, args.rejects)
    elapsed = time.perf_counter() - t0
    summary = {**result.stats.as_dict(), "written": len(result.pairs), "output": str(args.output),
               "rejects_output": str(args.rejects) if args.rejects else None, "seconds": round(elapsed, 3)}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        s = result.stats
        print(f"read {s.rows_read} rows: {dict(s.quality)}; {s.high_unique} distinct high-quality prompts")
        print(f"pairs made {dict(s.candidates)}, kept {dict(s.pairs)}")
        if s.rejected:
            print("rejected: " + ", ".join(f"{k} {v}" for k, v in s.rejected.most_common()))
        print(f"wrote {len(result.pairs)} pairs to {args.output} in {elapsed:.1f} s")
    return 0


# --- rewrite-text -----------------------------------------------------------------------------------

def _register_rewrite_text(subparsers) -> None:
    from pipelines.rewrite.args import add_generation_args

    p = subparsers.add_parser(
        "rewrite-text", help="rewrite prompts with a BeautifulPrompt model on this machine",
        description="Rewrite plain prompts into detailed Stable Diffusion prompts with a causal LM (batched "
                    "generation). For prompt tables on a cluster use `promptmine rewrite`.")
    p.add_argument("prompts", nargs="*", metavar="PROMPT", help="prompts to rewrite")
    p.add_argument("--file", type=Path, help="also read prompts from this file, one per line")
    add_generation_args(p)
    p.add_argument("--json", action="store_true", help="print results and timing as JSON")
    p.set_defaults(func=run_rewrite_text)


def run_rewrite_text(args) -> int:
    from pez_core.rewrite.rewriter import DEFAULT_MODEL_ID, PromptError, Rewriter

    from pipelines.cli import CLIError
    from pipelines.rewrite.args import generation_config

    prompts = list(args.prompts)
    if args.file:
        try:
            prompts += [line.rstrip("\n") for line in args.file.read_text(encoding="utf-8").splitlines()
                        if line.strip()]
        except OSError as e:
            raise CLIError(f"--file {args.file}: {e.strerror or e}") from e
    if not prompts:
        raise CLIError("no prompts: give PROMPT arguments or --file")
    try:
        gen = generation_config(args)
        t0 = time.perf_counter()
        rw = Rewriter.from_pretrained(args.model or DEFAULT_MODEL_ID, template=args.template,
                                      device=args.device, dtype=args.dtype)
        t1 = time.perf_counter()
        results = rw.rewrite_detailed(prompts, gen)
        t2 = time.perf_counter()
    except (PromptError, ValueError, FileNotFoundError) as e:
        raise CLIError(str(e)) from e
    seconds = t2 - t1
    new_tokens = sum(r.new_tokens for r in results)
    timing = {"prompts": len(results), "load_seconds": round(t1 - t0, 3), "seconds": round(seconds, 3),
              "prompts_per_s": round(len(results) / seconds, 2), "new_tokens": new_tokens,
              "new_tokens_per_s": round(new_tokens / seconds, 1)}
    if args.json:
        print(json.dumps({"results": [{"raw_prompt": r.raw_prompt, "prompt": r.text,
                                       "prompt_tokens": r.prompt_tokens, "new_tokens": r.new_tokens}
                                      for r in results], **timing}, indent=2, ensure_ascii=False))
    else:
        for r in results:
            print(r.text)
        print(f"{timing['prompts']} prompts in {timing['seconds']} s ({timing['prompts_per_s']} prompts/s, "
              f"{timing['new_tokens_per_s']} new tokens/s)", file=sys.stderr)
    return 0
