"""Single-machine PEZ subcommands: ``invert``, ``distill``, ``concat`` and ``samples``."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from pipelines.pez.args import add_model_args, add_pez_args, load_clip_from_args, pez_config

log = logging.getLogger(__name__)


def run_with_progress(clip, targets, cfg, desc: str):
    """pez_core.invert with a tqdm bar over steps (on stderr). A keyword bank's entries that the prompt
    can use only as fragments or not at all (Vocabulary warns of them) go in each result's extra["bank"]."""
    from tqdm import tqdm

    from pez_core import Vocabulary, invert

    from pipelines.cli import CLIError

    try:
        vocab = Vocabulary.from_config(clip, cfg)
    except ValueError as e:
        raise CLIError(str(e)) from e
    with tqdm(total=cfg.steps, desc=desc, unit="step", file=sys.stderr, disable=None) as bar:
        def on_step(step, active):
            bar.update(1)
            bar.set_postfix(active=active, refresh=False)

        results = invert(clip, targets, cfg, vocab=vocab, on_step=on_step)
    if cfg.allow is not None:
        for r in results:
            r.extra["bank"] = vocab.bank_report
    return results


def result_dict(result, **fields) -> dict:
    """A result as JSON; with a joint CLIP, each encoder's cosine ("encoders"), with a keyword bank its
    entries usable only as fragments or not at all ("bank": entry -> surviving tokens)."""
    row = {**fields, "prompt": result.text, "token_ids": result.token_ids, "cosine": round(result.cosine, 6),
           "best_step": result.best_step, "steps_run": result.steps_run}
    if "encoders" in result.extra:
        row["encoders"] = {k: round(v, 6) for k, v in result.extra["encoders"].items()}
    if "bank" in result.extra:
        row["bank"] = result.extra["bank"]
    if "nll" in result.extra:  # the fluency prior's score of the prompt (nats per token)
        row["nll"] = round(result.extra["nll"], 4)
    if "polish_moves" in result.extra:  # words the polish replaced or swapped (PEZConfig.polish_sweeps)
        row["polish_moves"] = result.extra["polish_moves"]
    if result.extra.get("soft"):  # --method soft: no text; its embedding and what its nearest tokens reach
        row.update(soft=True, embedding=result.extra["embedding"], nearest_prompt=result.extra["nearest_text"],
                   nearest_cosine=round(result.extra["nearest_cosine"], 6))
    return row


def _shown(result) -> str:
    """The prompt to print: its text, or for a soft prompt (no text) its nearest tokens."""
    return result.text or result.extra.get("nearest_text", "")


def _nll(result) -> str:
    """With the fluency prior, the prompt's NLL per token under the prompt LM: ' nll=2.31'."""
    return f" nll={result.extra['nll']:.2f}" if "nll" in result.extra else ""


def _encoders(result) -> str:
    """With a joint CLIP, the prompt's cosine on each encoder alone: ' (world=0.8100 world-ref=0.7700)'."""
    enc = result.extra.get("encoders")
    if result.extra.get("soft"):
        return f"\tsoft prompt (no text); nearest tokens reach {result.extra['nearest_cosine']:.4f}:"
    return " (" + " ".join(f"{k}={v:.4f}" for k, v in enc.items()) + ")" if enc else ""


# ---- invert ----------------------------------------------------------------------------------
def cmd_invert(args) -> int:
    from pez_core import ImageError, image_target, load_image

    from pipelines.cli import CLIError

    images, errors = [], []
    for path in args.images:
        try:
            images.append(load_image(path))
        except ImageError as e:
            errors.append(str(e))
    if errors:
        raise CLIError("cannot use these inputs:\n  " + "\n  ".join(errors))
    cfg = pez_config(args)
    clip = load_clip_from_args(args)
    if args.shared:
        targets, names = [image_target(clip, images, seed=cfg.seed)], [[str(p) for p in args.images]]
    else:
        targets = [image_target(clip, [im], seed=cfg.seed + i) for i, im in enumerate(images)]
        names = [str(p) for p in args.images]
    results = run_with_progress(clip, targets, cfg, "invert")
    rows = [result_dict(r, images=n) if args.shared else result_dict(r, image=n) for r, n in zip(results, names)]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row, r in zip(rows, results):
            label = ", ".join(row["images"]) if args.shared else row["image"]
            print(f"{label}\tcosine={r.cosine:.4f}{_nll(r)}{_encoders(r)}\t{_shown(r)}")
    return 0


# ---- distill ---------------------------------------------------------------------------------
def cmd_distill(args) -> int:
    from pez_core import text_target

    from pipelines.cli import CLIError

    if not args.prompt.strip():
        raise CLIError("PROMPT is empty")
    cfg = pez_config(args)
    clip = load_clip_from_args(args)
    n_long = len(clip.tokenize(args.prompt))
    if n_long > clip.context_length - 2:
        raise CLIError(f"PROMPT has {n_long} tokens; CLIP reads at most {clip.context_length - 2}")
    [result] = run_with_progress(clip, [text_target(clip, args.prompt, seed=cfg.seed)], cfg, "distill")
    row = result_dict(result, source=args.prompt, source_tokens=n_long,
                      ratio=round((len(result.token_ids) or cfg.prompt_len) / n_long, 4))
    if args.json:
        print(json.dumps(row, indent=2))
    else:
        print(f"cosine={result.cosine:.4f}{_nll(result)}{_encoders(result)}\tratio={row['ratio']}\t{_shown(result)}")
    return 0


# ---- concat / samples ------------------------------------------------------------------------
def cmd_concat(args) -> int:
    from pez_core import concat_prompts

    from pipelines.cli import CLIError

    try:
        print(concat_prompts(args.prompts, sep=args.sep))
    except ValueError as e:
        raise CLIError(str(e)) from e
    return 0


def cmd_samples(args) -> int:
    from pipelines.io.samples import write_sample_images

    for path in write_sample_images(args.folder, args.count, seed=args.seed):
        print(path)
    return 0


def register(sub) -> None:
    p = sub.add_parser("invert", help="image(s) -> hard prompt (PEZ)",
                       description="Optimise a hard prompt per image (or one shared prompt) against CLIP.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--shared", action="store_true", help="one prompt for all images (a shared style)")
    add_model_args(p)
    add_pez_args(p, "invert")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.set_defaults(func=cmd_invert)

    p = sub.add_parser("distill", help="long prompt -> short hard prompt (PEZ)",
                       description="Find a short prompt whose CLIP text features match a long prompt's.")
    p.add_argument("prompt", metavar="PROMPT", help="the long prompt")
    add_model_args(p)
    add_pez_args(p, "distill")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("concat", help="join learned prompts, checking they fit CLIP's 75 tokens")
    p.add_argument("prompts", nargs="+", metavar="PROMPT")
    p.add_argument("--sep", default=" ", help="separator (default: a space)")
    p.set_defaults(func=cmd_concat)

    p = sub.add_parser("samples", help="write synthetic sample images (for demos)")
    p.add_argument("folder", type=Path)
    p.add_argument("--count", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_samples)
