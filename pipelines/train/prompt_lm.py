"""``promptmine train prompt-lm``: the fluency prior PEZ uses for readable image prompts, as a Ray Train job.

    promptmine world captions --output captions.parquet --count 20000          # world text (or DiffusionDB)
    promptmine train prompt-lm --data captions.parquet --output prompt-lm --workers 2

Every worker reads the table's ``--column`` (default ``prompt``), tokenises it with CLIP's own BPE (the
tokenizer every preset shares), builds the same vocabulary from it (the CLIP ids that occur at least
``--min-count`` times; pez_core.prompt_lm), and trains a GPT-2 from scratch (or continues ``--model``, a
prompt LM folder) with next-token cross-entropy through the shared supervised loop: DDP, checkpoints,
resume. OUTPUT/model is a ``save_pretrained`` folder with ``prompt_lm.json``: ``--prompt-lm OUTPUT/model``
on any PEZ command, ``PromptLM.load(...)`` in Python.
"""

from __future__ import annotations

from pipelines.io.parquet import read_frame


class _PromptDataset:
    """Each prompt as ``BOS t1 .. tn EOS`` in LM ids, labels = inputs (padding masked by the collator)."""

    def __init__(self, vocab, token_lists):
        self.examples = []
        for ids in token_lists:
            lm = vocab.encode(ids)
            self.examples.append({"input_ids": lm, "labels": lm})

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        return self.examples[i]


def clip_token_lists(prompts, max_length: int) -> list[list[int]]:
    """CLIP BPE ids of each prompt (no start/end), cut to ``max_length``; empty prompts dropped."""
    import open_clip

    tokenizer = open_clip.get_tokenizer("ViT-L-14")  # bundled vocabulary: no download
    out = []
    for text in prompts:
        ids = tokenizer.encode(str(text))[:max_length] if isinstance(text, str) else []
        if ids:
            out.append(ids)
    return out


def prompt_lm_loop(config: dict) -> None:
    from pez_core.prompt_lm import PromptVocab, build_lm
    from pez_core.rewrite.sft import PadCollator, evaluate_loss, sft_loss

    from pipelines.train.loops import Run, _fit_supervised, _to_device, split_eval

    job = config["job"]
    cfg = job.algo
    run = Run(job)
    df = read_frame(job.data_uris, job.options, columns=[cfg.column])
    train_df, eval_df = split_eval(df, job.eval_fraction, job.seed)
    tokens = clip_token_lists(train_df[cfg.column], cfg.max_length)
    if not tokens:
        raise ValueError(f"{', '.join(job.data_uris)}: no non-empty text in column {cfg.column!r}")
    if run.model_dir or job.model:  # a checkpoint (resume) or a prompt LM to continue: its vocabulary
        from transformers import AutoModelForCausalLM

        source = run.model_source(job.model)
        vocab = PromptVocab.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source)
    else:
        vocab = PromptVocab.from_token_lists(tokens, cfg.min_count)
        model = build_lm(vocab, cfg, job.seed)
    model = model.to(run.device)
    collate = PadCollator(vocab.pad_token_id)
    eval_tokens = clip_token_lists(eval_df[cfg.column], cfg.max_length)

    def evaluate(m):
        if not eval_tokens:
            return None
        ev = _PromptDataset(vocab, eval_tokens)
        batches = [_to_device(collate(ev.examples[i:i + cfg.batch_size]), run.device)
                   for i in range(0, len(ev), cfg.batch_size)]
        return {"eval_loss": evaluate_loss(m, batches)}

    _fit_supervised(run, model, vocab, _PromptDataset(vocab, tokens), collate, sft_loss, cfg, evaluate)


def add_args(p) -> None:
    p.add_argument("--column", default="prompt", help="the table's text column (prompt)")
    p.add_argument("--layers", type=int, default=2, help="GPT-2 blocks (2)")
    p.add_argument("--width", type=int, default=64, help="GPT-2 width (64)")
    p.add_argument("--heads", type=int, default=2, help="attention heads (2)")
    p.add_argument("--min-count", type=int, default=1,
                   help="CLIP tokens seen fewer times in the table share the UNK row (1)")
    p.add_argument("--eval-fraction", type=float, default=0.05, help="rows held out for the final eval_loss (0.05)")


def build_config(args, given: dict):
    from pez_core.prompt_lm import PromptLMConfig

    return PromptLMConfig(column=args.column, layers=args.layers, width=args.width, heads=args.heads,
                          min_count=args.min_count, **given)
