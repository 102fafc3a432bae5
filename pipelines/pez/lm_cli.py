"""``promptmine lm-prompt``: learn a hard prompt that makes a causal LM classify text (PEZ section 5).

    promptmine lm-prompt --model gpt2-large --data train.parquet --eval-data test.parquet \\
        --verbalizer positive=great --verbalizer negative=terrible --suffix " It was" --transfer-model gpt2-xl
"""

from __future__ import annotations

import json
from pathlib import Path

READERS = {".parquet": "read_parquet", ".csv": "read_csv", ".jsonl": "read_json"}


def _table(path: Path, text_column: str, label_column: str, what: str) -> tuple[list[str], list[str]]:
    import pandas as pd

    from pipelines.cli import CLIError

    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise CLIError(f"{what} {path}: expected a .parquet, .csv or .jsonl table")
    try:
        df = getattr(pd, reader)(path, **({"lines": True} if reader == "read_json" else {}))
    except (OSError, ValueError) as e:
        raise CLIError(f"{what} {path}: {e}") from e
    missing = [c for c in (text_column, label_column) if c not in df.columns]
    if missing:
        raise CLIError(f"{what} {path}: no column {', '.join(missing)} (columns: {', '.join(map(str, df.columns))})")
    df = df.dropna(subset=[text_column, label_column])
    if df.empty:
        raise CLIError(f"{what} {path}: no rows with both {text_column} and {label_column}")
    return df[text_column].astype(str).tolist(), df[label_column].astype(str).tolist()


def _verbalizers(entries: list[str]) -> dict[str, str]:
    from pipelines.cli import CLIError

    out = {}
    for e in entries:
        label, sep, word = e.partition("=")
        if not sep or not label or not word.strip():
            raise CLIError(f"--verbalizer {e}: expected LABEL=WORD (e.g. positive=great)")
        out[label] = word.strip()
    if len(out) < 2:
        raise CLIError("give at least two --verbalizer LABEL=WORD (one per class)")
    return out


def _load(name: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipelines.cli import CLIError

    try:
        return AutoModelForCausalLM.from_pretrained(name), AutoTokenizer.from_pretrained(name)
    except OSError as e:
        raise CLIError(f"--model {name}: {str(e).splitlines()[0]}") from e


def cmd_lm_prompt(args) -> int:
    import torch

    from pez_core.lm_prompt import LMClassifier, LMPromptConfig, learn_lm_prompt

    from pipelines.cli import CLIError

    verbalizers = _verbalizers(args.verbalizer)
    texts, labels = _table(args.data, args.text_column, args.label_column, "--data")
    held = _table(args.eval_data, args.text_column, args.label_column, "--eval-data") if args.eval_data else (texts, labels)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, tok = _load(args.model)
    try:
        cfg = LMPromptConfig(prompt_len=args.prompt_len, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                             optimizer=args.optimizer, fluency=args.fluency, suffix=args.suffix, seed=args.seed)
        clf = LMClassifier(model, tok, verbalizers, args.suffix)
        result = learn_lm_prompt(model, tok, texts, labels, verbalizers, cfg)
        out = {"prompt": result.text, "token_ids": result.token_ids, "best_step": result.best_step,
               "train_accuracy": round(result.train_accuracy, 4),
               "accuracy": {"no_prompt": round(clf.accuracy(None, *held), 4),
                            "prompt": round(clf.accuracy(result.token_ids, *held), 4)}}
        if args.transfer_model:
            other, other_tok = _load(args.transfer_model)
            if other_tok.get_vocab() != tok.get_vocab():
                raise CLIError(f"--transfer-model {args.transfer_model}: its tokenizer differs from --model's; "
                               "a hard prompt transfers as token ids only between LMs that share one")
            clf2 = LMClassifier(other, other_tok, verbalizers, args.suffix)
            out["transfer"] = {"model": args.transfer_model, "no_prompt": round(clf2.accuracy(None, *held), 4),
                               "prompt": round(clf2.accuracy(result.token_ids, *held), 4)}
    except ValueError as e:
        raise CLIError(str(e)) from e
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"prompt: {result.text!r} (ids {result.token_ids})")
        print(f"accuracy: {out['accuracy']['prompt']:.4f} with the prompt, {out['accuracy']['no_prompt']:.4f} without")
        if "transfer" in out:
            t = out["transfer"]
            print(f"transfer to {t['model']}: {t['prompt']:.4f} with the prompt, {t['no_prompt']:.4f} without")
    return 0


def register(sub) -> None:
    p = sub.add_parser("lm-prompt", help="hard prompt that makes a causal LM classify text (PEZ section 5)",
                       description=__doc__)
    p.add_argument("--model", required=True, help="a causal LM: a transformers id (gpt2-large) or a local folder")
    p.add_argument("--data", type=Path, required=True, help="training table (.parquet, .csv, .jsonl)")
    p.add_argument("--eval-data", type=Path, help="held-out table for the reported accuracy (default: --data)")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--verbalizer", action="append", default=[], metavar="LABEL=WORD",
                   help="the one-token word that stands for LABEL (repeat per class)")
    p.add_argument("--suffix", default="", help="text after each example, before the answer (e.g. ' It was')")
    p.add_argument("--prompt-len", type=int, default=8)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=32, help="examples per step (paper: 32)")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--optimizer", default="adamw", choices=("adamw", "adafactor"), help="paper: adafactor")
    p.add_argument("--fluency", type=float, default=0.003, help="weight of the prompt's NLL (paper: 0.003)")
    p.add_argument("--transfer-model", help="a second LM with the same tokenizer: the prompt's accuracy there")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_lm_prompt)
