"""The one set of PEZ flags every PEZ entry point offers (invert, distill, mine), and PEZConfig from them."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The CLIP to optimise against: a preset, or an open_clip name with a tag, file or folder."""
    from pez_core.presets import PRESETS  # data only: no torch import

    p.add_argument("--preset", default="world", choices=sorted(PRESETS),
                   help="CLIP preset: world (default: promptmine's world CLIP, trained offline and shipped; its "
                        "images are what `promptmine samples` draws), sd15 (ViT-L-14/openai), sd2 (ViT-H-14, the "
                        "paper's), sdxl (both SDXL text encoders at once: ViT-L-14/openai + ViT-bigG-14), sdxl-g "
                        "(ViT-bigG-14 alone), tiny (random weights: fast tests only)")
    p.add_argument("--model", help="open_clip model name or a folder with open_clip_config.json (overrides "
                   "--preset); A+B (presets or folders) optimises one prompt against both text encoders")
    p.add_argument("--pretrained", help="with --model: a pretrained tag, a checkpoint file, or 'random'")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")


def add_pez_args(p: argparse.ArgumentParser, entry: str, demo: str | None = None) -> None:
    """PEZ settings; ``--steps`` and ``--prompt-len`` default to ``pez_core.budgets.BUDGETS[entry]``
    (and to ``BUDGETS[demo]`` when the command runs its demo), resolved by :func:`pez_config`."""
    from pez_core.budgets import BUDGETS

    b = BUDGETS[entry]
    d = f"; demo {BUDGETS[demo].steps}" if demo else ""
    dl = f"; demo {BUDGETS[demo].prompt_len}" if demo else ""
    p.add_argument("--steps", type=int, default=None,
                   help=f"most optimisation steps per target (default {b.steps}{d}; paper: 3000)")
    p.add_argument("--prompt-len", type=int, default=None,
                   help=f"tokens in the hard prompt (default {b.prompt_len}{dl}; paper: 16)")
    p.add_argument("--lr", type=float, default=0.1, help="AdamW learning rate (paper: 0.1)")
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay (paper: 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random initial prompts"
                   + (" (mixed with each key's CRC32)" if entry == "mine" else ""))
    p.add_argument("--no-early-stop", action="store_true",
                   help="run every target for all --steps (the paper's fixed budget); by default a target stops "
                        "once its best prompt has plateaued (README: When PEZ stops)")
    p.add_argument("--patience", type=int, help="also stop a target after this many steps without improvement")
    p.add_argument("--target-cosine", type=float, help="stop a target once its best cosine reaches this")
    p.add_argument("--ban", action="append", default=[], metavar="WORD",
                   help="never use the word WORD, in any case (repeatable; 'cat' keeps 'education' and 'cats')")
    p.add_argument("--ban-substring", action="append", default=[], metavar="TEXT",
                   help="never use a token containing TEXT (repeatable; the conservative mode for safety filters)")
    p.add_argument("--allow-file", type=Path, help="keyword bank: only tokens of the words in this file (one per line)")
    p.add_argument("--all-tokens", action="store_true",
                   help="search the whole vocabulary, not only round-trip-safe whole words (as the authors' code)")
    p.add_argument("--projection", default="fast", choices=("fast", "exact"),
                   help="nearest-token search: fast (bf16 ranking + exact fp32 re-rank) or exact fp32")
    p.add_argument("--method", default="pez", choices=("pez", "autoprompt-sgd", "fluentprompt", "soft"),
                   help="pez (default); the PEZ paper's baselines: autoprompt-sgd (project after each update), "
                        "fluentprompt (Langevin noise, project after each update), soft (no projection: no text)"
                   + ("; mine needs text, so not soft" if entry == "mine" else ""))
    p.add_argument("--langevin-noise", type=float, default=0.5,
                   help="fluentprompt: noise std in units of the token table's std, annealed to 0 (default 0.5)")
    p.add_argument("--fluency", type=float, default=None,
                   help="weight of the fluency prior: the prompt's NLL per token under --prompt-lm, added to the loss "
                        "(default: DEFAULT_FLUENCY where a prompt LM is in use, else 0; 0 turns it off)")
    p.add_argument("--prompt-lm", help="the fluency prior: a prompt LM preset (world) or a `promptmine train "
                                       "prompt-lm` model folder, or none (default: the preset's; world presets: world)")
    p.add_argument("--polish", type=int, default=3, metavar="SWEEPS",
                   help="with the fluency prior: sweeps of word-by-word polish of each finished prompt under the same "
                        "objective, proposals from --prompt-lm (default 3; 0: off)")
    p.set_defaults(pez_entry=entry, pez_demo=demo)


def pez_config(args, demo: bool = False):
    """PEZConfig from the flags of :func:`add_pez_args`; a bad value is a CLIError naming it."""
    from pez_core import PEZConfig
    from pez_core.budgets import BUDGETS

    from pipelines.cli import CLIError

    budget = BUDGETS[args.pez_demo if demo and args.pez_demo else args.pez_entry]
    allow = None
    if args.allow_file is not None:
        try:
            allow = [w.strip() for w in args.allow_file.read_text().splitlines() if w.strip()]
        except OSError as e:
            raise CLIError(f"--allow-file {args.allow_file}: {e.strerror or e}") from e
        if not allow:
            raise CLIError(f"--allow-file {args.allow_file}: no words in it")
    try:
        return PEZConfig(
            prompt_len=args.prompt_len if args.prompt_len is not None else budget.prompt_len,
            steps=args.steps if args.steps is not None else budget.steps,
            lr=args.lr, weight_decay=args.weight_decay, seed=args.seed, patience=args.patience,
            early_stop=not args.no_early_stop, target_cosine=args.target_cosine, ban=tuple(args.ban),
            ban_substring=tuple(args.ban_substring), allow=allow, safe_vocab=not args.all_tokens,
            projection=args.projection, method=args.method, langevin_noise=args.langevin_noise,
            polish_sweeps=args.polish, **fluency_settings(args),
        )
    except ValueError as e:
        raise CLIError(str(e)) from e


def fluency_settings(args) -> dict:
    """``fluency`` and ``prompt_lm`` for PEZConfig: the preset's prompt LM unless --prompt-lm says otherwise
    (none: off), and DEFAULT_FLUENCY with one unless --fluency is given."""
    from pez_core.presets import DEFAULT_FLUENCY, PRESETS
    from pez_core.prompt_lm import PRESETS as PROMPT_LMS

    lm = args.prompt_lm
    if lm is None and not getattr(args, "model", None):
        lm = PRESETS[args.preset].prompt_lm
    lm = None if lm in (None, "none") else lm
    fluency = args.fluency
    if fluency is None:
        fluency = DEFAULT_FLUENCY if lm and args.method != "soft" else 0.0
    if lm and lm not in PROMPT_LMS and Path(lm).expanduser().is_dir():
        lm = str(Path(lm).expanduser().resolve())  # workers run elsewhere
    return {"fluency": fluency, "prompt_lm": lm if fluency else None}


def load_clip_from_args(args):
    from pez_core import load_clip

    from pipelines.cli import CLIError

    if args.preset == "tiny" and not args.model:
        log.warning("preset 'tiny' has random weights: its prompts mean nothing (use --preset world|sd15|sd2|sdxl)")
    try:
        if args.model:
            return load_clip(args.model, pretrained=args.pretrained, device=args.device)
        return load_clip(args.preset, device=args.device)
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(str(e)) from e
