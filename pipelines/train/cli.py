"""``promptmine train sft|reward|ppo``: the three BeautifulPrompt stages as Ray Train jobs (and
``train prompt-lm``, PEZ's fluency prior: pipelines/train/prompt_lm.py).

    promptmine train sft    --data pairs.parquet --output s3://b/sft --model bigscience/bloom-1b1 --workers 4
    promptmine train reward --kind ps  --data pairs.parquet --output s3://b/r_ps  --model bigscience/bloom-1b1
    promptmine train reward --kind aes --data pairs.parquet --output s3://b/r_aes --model bigscience/bloom-1b1
    promptmine train ppo    --data pairs.parquet --output s3://b/ppo --model s3://b/sft/model \\
                            --reward-ps s3://b/r_ps/model --reward-aes s3://b/r_aes/model

Each stage is a Ray Train V2 TorchTrainer (DDP across ``--workers``; gloo on CPU). Checkpoints go to
``OUTPUT/checkpoints/RUN_NAME`` (local or S3); a rerun of the same command resumes from the latest one, and
a crashed worker restarts the group from it (``--max-failures``). At the end the driver publishes:

    OUTPUT/model/          save_pretrained: AutoModelForCausalLM / AutoModelForSequenceClassification load it
                           (PPO adds value_head.pt)
    OUTPUT/best/           PPO: the policy with the best held-out reward (best.json says when); `promptmine serve
                           --rewrite-model OUTPUT` and Rewriter.from_pretrained(OUTPUT) load it
    OUTPUT/metrics.csv     one row per step (loss, lr, ... ; PPO: score, kl, kl_coef, pg_loss, vf_loss, ...)
    OUTPUT/metrics.jsonl   the same rows as JSON lines
    OUTPUT/summary.json    stage, steps, workers, the steps each attempt started from, final metrics, and
                           `data`: rows read = rows dropped (by reason) + held out + trained on
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train the rewriter: sft, reward models, ppo (Ray Train)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    stages = p.add_subparsers(dest="stage", metavar="STAGE", required=True)
    sft = stages.add_parser("sft", help="supervised fine-tuning, loss on the completion only")
    reward = stages.add_parser("reward", help="a regression reward model (aesthetic or PickScore)")
    ppo = stages.add_parser("ppo", help="PPO against the reward models with an adaptive KL penalty")
    plm = stages.add_parser("prompt-lm", help="PEZ's fluency prior: a GPT-2 over CLIP's tokens, on a prompt table")
    for sp in (sft, reward, ppo):
        _common_args(sp)
    _common_args(plm, model_help="a prompt LM folder to continue (default: a new GPT-2)", max_length=None)
    from pipelines.train.prompt_lm import add_args as add_prompt_lm_args

    add_prompt_lm_args(plm)
    sft.add_argument("--template", default="v1", help="instruction template: v1 (paper) or v2")
    sft.add_argument("--min-pick-score", type=float, help="drop pairs below this pick_score (paper: 18.5)")
    sft.add_argument("--min-aesthetic-score", type=float,
                     help="drop pairs below this aesthetic_score (the paper filters its data by it; no value given)")
    sft.add_argument("--eval-fraction", type=float, default=0.0, help="rows held out for a final eval_loss")
    sft.add_argument("--min-prompt-tokens", type=int, default=0,
                     help="drop pairs whose target prompt has fewer tokens (paper's code: 25; default 0: off)")
    sft.add_argument("--short-prompt-tokens", type=int, default=0,
                     help="pairs whose target prompt has fewer tokens than this are 'short' (paper's code: 35)")
    sft.add_argument("--short-drop", type=float, default=0.0,
                     help="share of short pairs dropped at random (paper's code: 0.3; default 0)")
    reward.add_argument("--kind", required=True, choices=("aes", "ps"),
                        help="aes: input prompt, target aesthetic_score; ps: input raw + prompt, target pick_score")
    reward.add_argument("--eval-fraction", type=float, default=0.05,
                        help="rows held out for the final eval_mse and eval_pearson (default 0.05)")
    ppo.add_argument("--template", default="v1", help="instruction template the SFT model was trained with")
    ppo.add_argument("--ref-model", help="frozen reference model (default: --model, the SFT model)")
    ppo.add_argument("--reward-ps", help="PickScore reward model folder or s3 URI (from `train reward --kind ps`)")
    ppo.add_argument("--reward-aes", help="aesthetic reward model folder or s3 URI (from `train reward --kind aes`)")
    ppo.add_argument("--alpha", type=float, default=0.7, help="reward = alpha * r_ps + (1 - alpha) * r_aes (0.7)")
    ppo.add_argument("--absolute-reward", action="store_true",
                     help="do not subtract the reward of the dataset's high-quality prompt")
    ppo.add_argument("--rollouts-per-step", type=int, default=64, help="rollouts per step per worker (64)")
    ppo.add_argument("--chunk-size", type=int, default=16, help="prompts per generate call (16)")
    ppo.add_argument("--minibatch-size", type=int, default=4, help="rollouts per optimiser update per worker (4)")
    ppo.add_argument("--ppo-epochs", type=int, default=4, help="consecutive updates on each minibatch (4)")
    ppo.add_argument("--num-layers-unfrozen", type=int, default=8,
                     help="top transformer blocks trained; embeddings and lower blocks frozen; -1: all (8)")
    ppo.add_argument("--weight-decay", type=float, default=1e-6, help="AdamW weight decay (1e-6)")
    ppo.add_argument("--min-lr", type=float, help="cosine annealing floor over the run (default lr / 10)")
    ppo.add_argument("--eval-interval", type=int, default=200,
                     help="optimiser updates between held-out evaluations; the best model is kept in "
                          "OUTPUT/best (200; 0: off)")
    ppo.add_argument("--eval-prompts", type=int, default=64, help="held-out raw prompts per evaluation (64)")
    ppo.add_argument("--init-kl-coef", type=float, default=0.05, help="initial KL coefficient (0.05)")
    ppo.add_argument("--target-kl", type=float, default=6.0, help="adaptive KL target; 0 keeps it fixed (6)")
    ppo.add_argument("--kl-horizon", type=int, default=10000, help="adaptive KL horizon in rollouts (10000)")
    ppo.add_argument("--max-new-tokens", type=int, default=256, help="tokens per rollout (256)")
    ppo.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (1.0)")


def _common_args(p: argparse.ArgumentParser, model_help: str | None = None, max_length: int | None = 384) -> None:
    p.add_argument("--data", required=True, action="append",
                   help="Parquet file or folder (local or s3://) with raw_prompt, prompt, pick_score, aesthetic_score; "
                        "repeat it to train on several tables (their rows one after the other)")
    p.add_argument("--output", required=True, help="output folder (local or s3://): model/, metrics, checkpoints/")
    p.add_argument("--model", required=model_help is None,
                   help=model_help or "base model: Hugging Face id, local folder or s3:// folder (ppo: the SFT model)")
    p.add_argument("--epochs", type=int, help="passes over the data (sft 4, reward 1)")
    p.add_argument("--lr", type=float, help="learning rate (sft/reward 2e-5, ppo 5e-6)")
    p.add_argument("--batch-size", type=int, help="examples per worker per step (16)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser updates (ppo: trlx's total_steps, "
                                                 "default 5000)")
    p.add_argument("--max-length", type=int, default=max_length,
                   help=f"tokens per example ({max_length or 'prompt-lm: 40 CLIP tokens'})")
    p.add_argument("--warmup-ratio", type=float, default=0.03, help="share of warmup steps (0.03)")
    p.add_argument("--seed", type=int, default=0, help="seed of shuffling, sampling and new heads")
    add_ray_train_args(p)
    p.set_defaults(func=cmd_train)


def add_ray_train_args(p: argparse.ArgumentParser, run_name_default: str = "the stage, or reward-KIND") -> None:
    """The Ray Train flags every training command shares: workers, checkpoints, resume, cluster, storage."""
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers (DDP ranks)")
    p.add_argument("--gpus-per-worker", type=float, default=0, help="GPUs per worker (0: CPU with gloo)")
    p.add_argument("--cpus-per-worker", type=float, default=1, help="CPUs per worker (torch threads follow it)")
    p.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints (and at the end)")
    p.add_argument("--keep-checkpoints", type=int, default=2, help="checkpoints kept in storage (2)")
    p.add_argument("--max-failures", type=int, default=1, help="worker-group restarts from the last checkpoint (1)")
    p.add_argument("--run-name", help="checkpoint folder under OUTPUT/checkpoints; a rerun with the same name "
                                      "resumes (default: " + run_name_default + ")")
    p.add_argument("--address", metavar="RAY_ADDRESS", help="Ray cluster to join (e.g. auto); default: a local Ray")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint (MinIO, SeaweedFS); default: $AWS_ENDPOINT_URL")
    p.add_argument("--credentials", choices=("forward", "worker"), default="forward",
                   help="forward: workers use the driver's AWS credentials; worker: each node's own chain")
    p.add_argument("--inject-failure", metavar="STEP:MARKER", help=argparse.SUPPRESS)  # resume tests only


# ---- building the job -----------------------------------------------------------------------------
def build_job(args):
    """A TrainJob from the parsed arguments; ValueError (from the configs) names a bad value."""
    from pez_core.rewrite.ppo import PPOConfig
    from pez_core.rewrite.reward_model import RewardConfig
    from pez_core.rewrite.sft import SFTConfig

    from pipelines.train.faults import parse as parse_fault
    from pipelines.train.loops import TrainJob
    from pipelines.train.trainer import storage_options

    given = {k: v for k, v in {"lr": args.lr, "epochs": args.epochs, "batch_size": args.batch_size}.items()
             if v is not None}
    common = dict(max_length=args.max_length, warmup_ratio=args.warmup_ratio)
    if args.stage == "sft":
        algo = SFTConfig(template=args.template, min_pick_score=args.min_pick_score,
                         min_aesthetic_score=args.min_aesthetic_score,
                         min_prompt_tokens=args.min_prompt_tokens, short_prompt_tokens=args.short_prompt_tokens,
                         short_drop=args.short_drop, **common, **given)
    elif args.stage == "reward":
        algo = RewardConfig(kind=args.kind, **common, **given)
    elif args.stage == "prompt-lm":
        from pipelines.train.prompt_lm import build_config

        algo = build_config(args, {**{k: v for k, v in common.items() if v is not None}, **given})
    else:
        algo = PPOConfig(
            template=args.template, rollouts_per_step=args.rollouts_per_step, chunk_size=args.chunk_size,
            minibatch_size=args.minibatch_size, ppo_epochs=args.ppo_epochs, init_kl_coef=args.init_kl_coef,
            target_kl=args.target_kl or None, kl_horizon=args.kl_horizon, max_new_tokens=args.max_new_tokens,
            temperature=args.temperature, num_layers_unfrozen=args.num_layers_unfrozen,
            weight_decay=args.weight_decay, min_lr=args.min_lr, **({"lr": args.lr} if args.lr is not None else {}),
        )
        if args.eval_interval < 0 or args.eval_prompts < 1:
            raise ValueError(f"need --eval-interval >= 0 and --eval-prompts >= 1, got {args.eval_interval}, "
                             f"{args.eval_prompts}")
        if args.batch_size is not None or args.epochs is not None:
            raise ValueError("ppo: use --rollouts-per-step / --minibatch-size / --max-steps, not --batch-size/--epochs")
        if not args.reward_ps and not args.reward_aes:
            raise ValueError("ppo needs --reward-ps and/or --reward-aes (from `promptmine train reward`)")
    for name in ("workers", "checkpoint_every", "keep_checkpoints"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_steps is not None and args.max_steps < 1:
        raise ValueError(f"--max-steps must be >= 1, got {args.max_steps}")
    fraction = getattr(args, "eval_fraction", 0.0)
    if not 0 <= fraction < 0.5:
        raise ValueError(f"--eval-fraction must be in [0, 0.5), got {fraction}")
    # Ray workers run in another directory: make local paths absolute here (hub ids stay as they are).
    def absolute(value: str) -> str:
        return value if "://" in value else os.path.abspath(os.path.expanduser(value))

    data = tuple(absolute(d) for d in args.data)
    for name in ("output", "model", "ref_model", "reward_ps", "reward_aes"):
        value = getattr(args, name, None)
        if value and (name == "output" or os.path.exists(value)):
            setattr(args, name, absolute(value))
    uris = [*data, args.output, args.model, *(getattr(args, k, None) for k in ("ref_model", "reward_ps",
                                                                               "reward_aes"))]
    options = storage_options(args, uris)
    return TrainJob(
        stage=args.stage, data_uris=data, model=args.model, algo=algo, options=options,
        max_steps=args.max_steps, checkpoint_every=args.checkpoint_every, seed=args.seed, eval_fraction=fraction,
        ref_model=getattr(args, "ref_model", None),
        reward_ps=getattr(args, "reward_ps", None), reward_aes=getattr(args, "reward_aes", None),
        alpha=getattr(args, "alpha", 0.7), relative_reward=not getattr(args, "absolute_reward", False),
        threads=max(1, int(args.cpus_per_worker)), inject_failure=parse_fault(args.inject_failure),
        output=args.output,
        eval_interval=getattr(args, "eval_interval", 0), eval_prompts=getattr(args, "eval_prompts", 64),
    )


def check_data(job) -> int:
    """Fail fast on the driver: each table exists and has the columns the stage reads. Returns their rows."""
    return sum(_check_table(job, uri) for uri in job.data_uris)


def _check_table(job, uri: str) -> int:
    import pyarrow.dataset as pads

    from pipelines.train.loops import REQUIRED_COLUMNS

    loc = job.options.resolve(uri)
    try:
        dataset = pads.dataset(loc.path, filesystem=loc.fs, format="parquet")
    except (OSError, ValueError) as e:
        raise ValueError(f"--data {uri}: cannot read Parquet ({str(e).splitlines()[0][:200]})") from e
    needed = list(REQUIRED_COLUMNS[job.stage])
    if job.stage == "reward":
        needed.append(job.algo.score_column)
        if job.algo.kind == "ps":
            needed.append("raw_prompt")
    if job.stage == "prompt-lm":
        needed.append(job.algo.column)
    for column in ("pick_score", "aesthetic_score"):
        if getattr(job.algo, f"min_{column}", None) is not None:
            needed.append(column)
    missing = [c for c in needed if c not in dataset.schema.names]
    if missing:
        raise ValueError(f"--data {uri}: missing column(s) {', '.join(missing)}; "
                         f"it has {', '.join(dataset.schema.names)}")
    rows = dataset.count_rows()
    if rows == 0:
        raise ValueError(f"--data {uri}: no rows")
    return rows


# ---- running it -----------------------------------------------------------------------------------
def run_training(job, output: str, workers: int, gpus_per_worker: float = 0, cpus_per_worker: float = 1,
                 run_name: str | None = None, keep_checkpoints: int = 2, max_failures: int = 1,
                 address: str | None = None) -> dict:
    """Run the stage on Ray Train and publish model, metrics and summary to ``output``; returns the summary."""
    from pipelines.train.loops import LOOPS
    from pipelines.train.trainer import fit

    rows = check_data(job)
    out = job.options.resolve(output)
    name = run_name or (f"reward-{job.algo.kind}" if job.stage == "reward" else job.stage)
    t0 = time.monotonic()
    log.info("train %s: %d rows", job.stage, rows)
    result = fit(LOOPS[job.stage], {"job": job}, out, name, workers, gpus_per_worker, cpus_per_worker,
                 keep_checkpoints, max_failures, address)
    summary = publish(result.checkpoint, out, job, workers, name)
    summary["seconds"] = round(time.monotonic() - t0, 1)
    out.child("summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def publish(checkpoint, out, job, workers: int, name: str) -> dict:
    """Copy the final checkpoint's model to OUTPUT/model and write metrics.csv / metrics.jsonl."""
    import pandas as pd

    with checkpoint.as_directory() as d:
        d = Path(d)
        progress = json.loads((d / "progress.json").read_text())
        for path in sorted((d / "model").rglob("*")):
            if path.is_file():
                out.child("model", str(path.relative_to(d / "model"))).write_bytes(path.read_bytes())
    rows = progress["rows"]
    out.child("metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out.child("metrics.csv").write_text(pd.DataFrame(rows).to_csv(index=False))
    last = rows[-1] if rows else {}
    best = out.child("best")
    has_best = job.stage == "ppo" and best.child("best.json").exists()
    return {"best": best.uri if has_best else None,
        "stage": job.stage, "steps": progress["step"], "workers": workers, "world_size": progress["world_size"],
        "attempt_start_steps": progress["starts"], "model": out.child("model").uri,
        "metrics": out.child("metrics.csv").uri, "checkpoints": f"{out.child('checkpoints').uri}/{name}",
        "final": {k: v for k, v in last.items() if k != "sample"}, "data": progress.get("data", {}),
    }


def describe_data(data: dict) -> str:
    """One line of a stage's row accounting: read = dropped + held out + trained on."""
    dropped = sum(data.get("dropped", {}).values())
    why = "; ".join(f"{reason}: {n}" for reason, n in data.get("dropped", {}).items())
    return (f"{data['read']} rows read, {dropped} dropped{f' ({why})' if why else ''}, {data['eval']} held out "
            f"for evaluation, {data['trained_on']} trained on")


def cmd_train(args) -> int:
    from pipelines.train.trainer import user_errors

    with user_errors():
        job = build_job(args)
        summary = run_training(job, args.output, args.workers, args.gpus_per_worker, args.cpus_per_worker,
                               args.run_name, args.keep_checkpoints, args.max_failures, args.address)
    final = ", ".join(f"{k}={v:.4g}" for k, v in summary["final"].items()
                      if isinstance(v, float) and k not in ("seconds",))
    print(f"train {summary['stage']}: {summary['steps']} steps on {summary['world_size']} workers "
          f"in {summary['seconds']} s (attempts started at steps {summary['attempt_start_steps']})")
    print(f"  final: {final}")
    if summary.get("data"):
        print(f"  data:    {describe_data(summary['data'])}")
    print(f"  model:   {summary['model']}\n  metrics: {summary['metrics']}\n  checkpoints: {summary['checkpoints']}")
    if summary.get("best"):
        print(f"  best:    {summary['best']} (highest held-out reward; what --rewrite-model OUTPUT serves)")
    sys.stdout.flush()
    return 0
