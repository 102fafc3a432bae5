"""The ``promptmine`` console script: one subcommand per job.

Each job module exposes ``register(subparsers)``, which adds its parser and sets ``func(args) -> int``.
Job modules keep heavy imports (torch, ray, open_clip) inside their functions so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Modules that register subcommands, in the order `promptmine --help` lists them.
JOB_MODULES = (
    "pipelines.pez.cli",  # invert, distill, concat
    "pipelines.pez.lm_cli",  # lm-prompt (hard prompts for LM classifiers)
    "pipelines.rewrite.cli",  # pairs, rewrite-text (single machine)
    "pipelines.mine.cli",  # mine (Ray Data, resumable)
    "pipelines.rewrite.job",  # rewrite (Ray Data over prompt tables, resumable)
    "pipelines.train.cli",  # train sft|reward|ppo (Ray Train)
    "pipelines.train.world",  # world train (Ray Train: the world CLIP)
    "serve.cli",  # serve (Ray Serve online API)
    "pipelines.evaluate.cli",  # eval invert|rewrite, label (Ray Data, resumable)
    "pipelines.evaluate.report",  # report (HTML page + PNG contact sheet of a job output)
)


class CLIError(Exception):
    """A user error: printed as one line on stderr, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="promptmine",
        description="Mine and rewrite prompts for text-to-image models (PEZ, BeautifulPrompt) on Ray.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in JOB_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except CLIError as e:
        print(f"promptmine {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"promptmine {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # python -m pipelines.cli: run the imported module's main, so that the CLIError
    from pipelines.cli import main as _main  # the job modules raise is the one caught there

    sys.exit(_main())
