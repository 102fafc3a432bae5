"""The one set of generation flags every rewriting command offers (rewrite-text, rewrite), and its config."""

from __future__ import annotations

_MODES = ("greedy", "sample", "beam")  # = pez_core.rewrite.rewriter.MODES (not imported: it loads torch)


def add_generation_args(p, on_workers: bool = False) -> None:
    """Model, template and decoding flags; ``on_workers``: the model is loaded by Ray workers."""
    from pez_core.rewrite.templates import TEMPLATES

    p.add_argument("--model", default=None,
                   help="Hugging Face id or local folder (default: alibaba-pai/pai-bloom-1b1-text2prompt-sd)"
                        + ("; every worker must be able to load it" if on_workers else ""))
    p.add_argument("--template", default="v1", choices=sorted(TEMPLATES),
                   help="; ".join(f"{k}: {t.description}" for k, t in sorted(TEMPLATES.items())))
    p.add_argument("--mode", default="greedy", choices=_MODES,
                   help="decoding (default greedy)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="cap on generated tokens (default 256)")
    p.add_argument("--min-new-tokens", type=int, default=0, help="suppress EOS until this many tokens (default 0)")
    p.add_argument("--temperature", type=float, default=1.0, help="sample: softmax temperature")
    p.add_argument("--top-p", type=float, default=1.0, help="sample: nucleus mass in (0, 1]")
    p.add_argument("--top-k", type=int, default=0, help="sample: keep the k best tokens, 0 = off")
    p.add_argument("--num-beams", type=int, default=4, help="beam: beams per prompt (>= 2)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats (model card: 1.2)")
    p.add_argument("--seed", type=int, default=None, help="sample: seed" + (" (mixed with each shard's name)" if on_workers else ""))
    p.add_argument("--batch-size", type=int, default=16, help="prompts per generate call (default 16)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", help="float32 | bfloat16 | float16 | auto (default: float32 on CPU)")


def generation_config(args):
    """The validated GenerationConfig of the flags above (a ValueError names the bad one)."""
    from pez_core.rewrite.rewriter import GenerationConfig

    return GenerationConfig(max_new_tokens=args.max_new_tokens, min_new_tokens=args.min_new_tokens, mode=args.mode,
                            temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                            num_beams=args.num_beams, repetition_penalty=args.repetition_penalty, seed=args.seed,
                            batch_size=args.batch_size)
