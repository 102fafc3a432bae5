"""``promptmine world train-aesthetic``, ``init-lm`` and ``captions``: the world loops' models and text.

    promptmine world train-aesthetic --output world-aes     # the aesthetic stand-in: OUTPUT/world-aesthetic.safetensors
    promptmine world init-lm --output world-lm              # a randomly initialised BLOOM + BPE on world text
    promptmine world captions --output captions.parquet     # world captions (a `prompt` column), e.g. for
                                                            # `promptmine train prompt-lm`

- train-aesthetic renders world prompts, computes their visual aesthetic from the pixels
  (``pez_core.scoring.world_aesthetic.visual_aesthetic``) and trains the LAION predictor's MLP over the
  ``world`` CLIP image embeddings to regress it (one process, a few minutes on a CPU; the MLP has 270k
  parameters). The shipped ``--aesthetic-weights world`` was made by this command with its defaults.
- init-lm builds the rewriter's starting point: a byte-level BPE tokenizer trained on world text and a
  random ``BloomForCausalLM`` (``pez_core.rewrite.tiny.build_tiny_lm``), loaded by every training stage
  as ``--model OUTPUT``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def cmd_train_aesthetic(args) -> int:
    from pez_core.scoring.world_aesthetic import WorldAestheticConfig, save_weights, train_world_aesthetic

    from pipelines.cli import CLIError

    try:
        cfg = WorldAestheticConfig(images=args.images, epochs=args.epochs, lr=args.lr, clip=args.clip,
                                   seed=args.seed, threads=args.threads)
    except ValueError as e:
        raise CLIError(str(e)) from e
    t0 = time.monotonic()
    state, stats = train_world_aesthetic(cfg, log_fn=lambda m: print(f"train-aesthetic: {m}", flush=True))
    out = Path(args.output)
    path = save_weights(state, out / "world-aesthetic.safetensors")
    stats["seconds"] = round(time.monotonic() - t0, 1)
    stats["weights"] = str(path)
    (out / "summary.json").write_text(json.dumps({"config": vars(cfg), **stats}, indent=2))
    print(f"train-aesthetic: {stats['train_images']} images, held-out ({stats['eval_images']}) MSE "
          f"{stats['eval_mse']:.4f}, Pearson {stats['eval_pearson']:.4f} (target mean {stats['target_mean']:.2f}, "
          f"std {stats['target_std']:.2f}) in {stats['seconds']} s")
    print(f"  weights: {path}  (--aesthetic-weights {path} --aesthetic-clip {cfg.clip})")
    sys.stdout.flush()
    return 0


def cmd_init_lm(args) -> int:
    from pez_core.rewrite.tiny import build_tiny_lm
    from pez_core.world.prompts import world_corpus

    from pipelines.cli import CLIError

    try:
        folder = build_tiny_lm(args.output, arch="bloom", seed=args.seed, hidden_size=args.hidden_size,
                               num_layers=args.layers, num_heads=args.heads, vocab_size=args.vocab_size,
                               corpus=world_corpus(seed=args.seed))
    except ValueError as e:
        raise CLIError(str(e)) from e
    from transformers import AutoConfig, AutoTokenizer

    n_vocab = len(AutoTokenizer.from_pretrained(folder))
    config = AutoConfig.from_pretrained(folder)
    print(f"init-lm: BLOOM {config.n_layer} layers x {config.hidden_size} wide, {config.n_head} heads, "
          f"vocabulary {n_vocab}, random weights -> {folder}  (--model {folder})")
    return 0


def cmd_captions(args) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pez_core.world.prompts import world_captions

    from pipelines.cli import CLIError

    if args.count < 1:
        raise CLIError(f"--count must be >= 1, got {args.count}")
    rows = world_captions(args.count, args.seed)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"prompt": rows}), args.output)
    print(f"captions: {len(rows)} world captions -> {args.output}  (e.g. \"{rows[0]}\")")
    return 0


def register(sub) -> None:
    a = sub.add_parser("train-aesthetic", help="train the world's aesthetic stand-in (LAION-style MLP over world-CLIP "
                                               "image embeddings)", description=__doc__)
    a.add_argument("--output", required=True, help="output folder: world-aesthetic.safetensors, summary.json")
    a.add_argument("--images", type=int, default=4000, help="rendered training images; 10%% more are held out (4000)")
    a.add_argument("--epochs", type=int, default=30, help="passes over the images (30)")
    a.add_argument("--lr", type=float, default=2e-3, help="peak learning rate, one-cycle schedule (2e-3)")
    a.add_argument("--clip", default="world", help="CLIP whose image embeddings the MLP reads (world)")
    a.add_argument("--seed", type=int, default=0, help="seed of prompts, render seeds and weights")
    a.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    a.set_defaults(func=cmd_train_aesthetic)
    m = sub.add_parser("init-lm", help="a random BLOOM with a BPE tokenizer trained on world text (the loop's base "
                                       "model)", description=__doc__)
    m.add_argument("--output", required=True, help="output folder (save_pretrained: model and tokenizer)")
    m.add_argument("--hidden-size", type=int, default=128, help="width (128)")
    m.add_argument("--layers", type=int, default=2, help="transformer blocks (2)")
    m.add_argument("--heads", type=int, default=4, help="attention heads (4)")
    m.add_argument("--vocab-size", type=int, default=1024, help="BPE vocabulary cap (1024; world text saturates "
                                                               "near 700)")
    m.add_argument("--seed", type=int, default=0, help="seed of the corpus and the weights")
    m.set_defaults(func=cmd_init_lm)
    c = sub.add_parser("captions", help="a Parquet table of world captions (column prompt)", description=__doc__)
    c.add_argument("--output", required=True, help="Parquet file to write")
    c.add_argument("--count", type=int, default=20000, help="captions (20000)")
    c.add_argument("--seed", type=int, default=0, help="seed of the scenes and wording (0)")
    c.set_defaults(func=cmd_captions)
