"""What each Ray Train worker runs for ``promptmine train sft|reward|ppo``.

Every stage has the same skeleton: read the Parquet table, resume from ``ray.train.get_checkpoint()`` if
there is one (model weights, optimiser/scheduler or PPO state, step, and the metrics so far), wrap the
model in DDP (gloo on CPU, NCCL on GPU), train, and report a metrics row every step and a checkpoint every
``checkpoint_every`` steps and at the end. Rank 0 writes the checkpoint; every rank calls report.

Data is read by each worker straight from Parquet (local or S3) and sharded with a DistributedSampler
rather than through Ray Data: pair tables are small (the paper's is 143k rows), the order is reproducible
from (seed, epoch), so a resumed run skips exactly the batches it already trained on, and Ray Data's read
tasks would compete with the training workers for the CPUs of a small cluster.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.io.parquet import read_frame
from pipelines.io.storage import StorageOptions
from pipelines.train.faults import die_once
from pipelines.train.prompt_lm import prompt_lm_loop

log = logging.getLogger(__name__)

STAGES = ("sft", "reward", "ppo", "prompt-lm")
REQUIRED_COLUMNS = {"sft": ("raw_prompt", "prompt"), "reward": ("prompt",), "ppo": ("raw_prompt", "prompt"),
                    "prompt-lm": ()}  # prompt-lm: its --column


@dataclass
class TrainJob:
    """Everything a worker needs; shipped in train_loop_config (its repr never shows credentials)."""

    stage: str  # "sft", "reward", "ppo" or "prompt-lm"
    data_uris: tuple[str, ...]  # Parquet files or folders (local paths or s3://bucket/prefix), rows concatenated
    model: str | None  # base model: Hugging Face id, local or s3:// folder (PPO: the SFT model; prompt-lm: optional)
    algo: object  # SFTConfig, RewardConfig, PPOConfig or PromptLMConfig
    options: StorageOptions = field(default_factory=StorageOptions)  # how to reach S3
    max_steps: int | None = None  # stop after this many optimiser (PPO) steps
    checkpoint_every: int = 100  # steps between checkpoints (plus one at the end)
    seed: int = 0  # shuffling, sampling and initialisation
    eval_fraction: float = 0.0  # rows held out for a final evaluation (sft, reward)
    ref_model: str | None = None  # ppo: frozen reference (default: model)
    reward_ps: str | None = None  # ppo: r_ps folder or s3 URI
    reward_aes: str | None = None  # ppo: r_aes folder or s3 URI
    alpha: float = 0.7  # ppo: weight of r_ps in the reward
    relative_reward: bool = True  # ppo: reward minus the reward of the dataset's high-quality prompt
    threads: int = 1  # torch threads per worker
    output: str | None = None  # ppo: the run's output folder (OUTPUT/best is written there during training)
    eval_interval: int = 0  # ppo: optimiser updates between held-out evaluations (0: none)
    eval_prompts: int = 64  # ppo: held-out raw prompts scored by greedy rewrites at each evaluation
    inject_failure: tuple[int, str] | None = field(default=None, repr=False)  # (step, marker file): tests only


# ---- helpers shared by the stages -----------------------------------------------------------------
_DOWNLOADED: dict[str, str] = {}  # s3 URI -> local copy, per worker process


def _local_folder(uri: str, options: StorageOptions) -> str:
    """A local folder for a model URI: s3:// folders are downloaded once per process; others pass through."""
    if not uri.startswith(("s3://", "s3a://")):
        return uri
    if uri not in _DOWNLOADED:
        root = options.resolve(uri)
        files = root.list_files()
        if not files:
            raise FileNotFoundError(f"{uri}: no files (expected a saved model folder)")
        folder = Path(tempfile.mkdtemp(prefix="promptmine-model-"))
        for loc, _ in files:
            target = folder / loc.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(loc.read_bytes())
        _DOWNLOADED[uri] = str(folder)
    return _DOWNLOADED[uri]


def split_eval(df, fraction: float, seed: int):
    """(train, eval) rows; the same split on every worker."""
    if fraction <= 0:
        return df, df.iloc[:0]
    shuffled = df.sample(frac=1.0, random_state=seed)
    n_eval = max(1, int(len(df) * fraction))
    return shuffled.iloc[n_eval:], shuffled.iloc[:n_eval]


class Run:
    """Rank, device, the metrics so far, and checkpoint save/restore for one worker."""

    def __init__(self, job: TrainJob):
        import ray.train
        import ray.train.torch
        import torch

        from pez_core.rewrite.optim import seed_everything

        torch.set_num_threads(job.threads)
        ctx = ray.train.get_context()
        self.job, self.rank, self.world = job, ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        seed_everything(job.seed + self.rank)
        self.rows: list[dict] = []  # one per step (rank 0's view, losses averaged over ranks)
        self.data: dict = {}  # the stage's row accounting (read, dropped by reason, held out, trained on)
        self.starts: list[int] = []  # the step each attempt started from (resume evidence)
        self.state: dict | None = None  # optimiser/scheduler/PPO state from the checkpoint
        self.model_dir: str | None = None  # model weights from the checkpoint
        self.step, self.t0, self.last_saved = 0, time.monotonic(), -1
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            self.model_dir = tempfile.mkdtemp(prefix="promptmine-resume-")
            with checkpoint.as_directory() as d:
                shutil.copytree(d, self.model_dir, dirs_exist_ok=True)
            self.state = torch.load(Path(self.model_dir) / "state.pt", map_location="cpu", weights_only=False)
            progress = json.loads((Path(self.model_dir) / "progress.json").read_text())
            self.rows, self.starts, self.step = progress["rows"], progress["starts"], progress["step"]
            self.last_saved = self.step
            self.model_dir = str(Path(self.model_dir) / "model")
        self.starts.append(self.step)
        log.info("rank %d/%d starts at step %d", self.rank, self.world, self.step)

    def account(self, read: int, dropped: dict[str, int], eval_rows: int, trained_on: int) -> None:
        """The stage's row accounting (summary.json ``data``): rows read = dropped (by reason) + held out
        for evaluation + trained on."""
        self.data = {"read": read, "dropped": dropped, "eval": eval_rows, "trained_on": trained_on}

    def model_source(self, base: str) -> str:
        return self.model_dir or _local_folder(base, self.job.options)

    def maybe_fail(self) -> None:
        """Fault injection for the resume test: the last rank dies once at the given step."""
        if self.job.inject_failure is None:
            return
        step, marker = self.job.inject_failure
        if self.step + 1 == step and self.rank == self.world - 1:
            die_once(marker, self.rank, step)

    def record(self, metrics: dict, model, tokenizer, state_fn, total: int) -> None:
        """Append a metrics row; report it with a checkpoint every ``checkpoint_every`` steps and at the end."""
        row = {"step": self.step, **metrics, "seconds": round(time.monotonic() - self.t0, 3)}
        self.rows.append(row)
        if self.step % self.job.checkpoint_every and self.step < total:
            # No ray.train.report between checkpoints: in Ray Train V2 each report waits for the controller
            # to poll the worker (about 2 s a step measured here, 20x a tiny model's step); the rows travel
            # in every checkpoint and the driver publishes them from the last one.
            return
        self.save(model, tokenizer, state_fn(), _numeric(row))

    def save(self, model, tokenizer, state: dict, metrics: dict) -> None:
        import ray.train
        import torch

        from pez_core.rewrite.ppo import unwrap

        self.last_saved = self.step
        with tempfile.TemporaryDirectory(prefix="promptmine-ckpt-") as d:
            checkpoint = None
            if self.rank == 0:
                unwrap(model).save_pretrained(Path(d) / "model")
                tokenizer.save_pretrained(Path(d) / "model")
                torch.save(state, Path(d) / "state.pt")
                progress = {"step": self.step, "rows": self.rows, "starts": self.starts, "world_size": self.world,
                            "data": self.data}
                (Path(d) / "progress.json").write_text(json.dumps(progress))
                checkpoint = ray.train.Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=checkpoint)

    def finish(self, model, tokenizer, state_fn) -> None:
        """Save the final checkpoint unless the last step was just saved (the driver publishes it)."""
        if self.last_saved != self.step:
            self.save(model, tokenizer, state_fn(), _numeric(self.rows[-1] if self.rows else {"step": self.step}))


def _numeric(row: dict) -> dict:
    return {k: v for k, v in row.items() if isinstance(v, (int, float))}


def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


# ---- SFT and reward models: one supervised loop ---------------------------------------------------
def _fit_supervised(run: Run, model, tokenizer, dataset, collate, loss_fn, cfg, evaluate=None):
    import ray.train.torch
    import torch

    from pez_core.rewrite.optim import cosine_schedule, global_mean, make_optimizer, train_step

    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=run.world, rank=run.rank,
                                                  shuffle=True, seed=run.job.seed)
    steps_per_epoch = -(-len(sampler) // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    if run.job.max_steps:
        total = min(total, run.job.max_steps)
    model = ray.train.torch.prepare_model(model)
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
    scheduler = cosine_schedule(optimizer, total, cfg.warmup_ratio)
    if run.state is not None:
        optimizer.load_state_dict(run.state["optimizer"])
        scheduler.load_state_dict(run.state["scheduler"])

    def state():
        return {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": run.step}

    while run.step < total:
        epoch, skip = divmod(run.step, steps_per_epoch)
        sampler.set_epoch(epoch)
        batches = list(torch.utils.data.BatchSampler(list(sampler), cfg.batch_size, drop_last=False))
        for i, indices in enumerate(batches[skip:], start=skip):
            run.maybe_fail()
            batch = _to_device(collate([dataset[j] for j in indices]), run.device)
            stats = train_step(model, loss_fn, batch, optimizer, scheduler, cfg.max_grad_norm)
            run.step += 1
            metrics = {"epoch": round(epoch + (i + 1) / steps_per_epoch, 4), "loss": global_mean(stats["loss"]),
                       "lr": stats["lr"], "grad_norm": stats["grad_norm"]}
            if run.step >= total and evaluate is not None:
                metrics.update(evaluate(model) or {})
            run.record(metrics, model, tokenizer, state, total)
            if run.step >= total:
                break
    run.finish(model, tokenizer, state)


def sft_loop(config: dict) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pez_core.rewrite.sft import PadCollator, PairDataset, evaluate_loss, length_filter, score_filter, sft_loss
    from pez_core.rewrite.tokenizer import ensure_pad_token

    job: TrainJob = config["job"]
    cfg = job.algo
    run = Run(job)
    df = read_frame(job.data_uris, job.options)
    read = len(df)
    df, dropped = score_filter(df, cfg)
    train_df, eval_df = split_eval(df, job.eval_fraction, job.seed)
    source = run.model_source(job.model)
    tokenizer = AutoTokenizer.from_pretrained(source)
    ensure_pad_token(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(source).to(run.device)
    keep = length_filter(tokenizer, list(train_df["prompt"]), cfg, job.seed)
    if len(keep) < len(train_df):
        dropped["length filter (--min-prompt-tokens, --short-drop)"] = len(train_df) - len(keep)
    train_df = train_df.iloc[keep]
    run.account(read, dropped, len(eval_df), len(train_df))
    dataset = PairDataset(tokenizer, list(train_df["raw_prompt"]), list(train_df["prompt"]), cfg.template,
                          cfg.max_length)
    collate = PadCollator(tokenizer.pad_token_id)

    def evaluate(m):
        if not len(eval_df):
            return None
        ev = PairDataset(tokenizer, list(eval_df["raw_prompt"]), list(eval_df["prompt"]), cfg.template, cfg.max_length)
        batches = [_to_device(collate(ev.examples[i:i + cfg.batch_size]), run.device)
                   for i in range(0, len(ev), cfg.batch_size)]
        return {"eval_loss": evaluate_loss(m, batches)}

    _fit_supervised(run, model, tokenizer, dataset, collate, sft_loss, cfg, evaluate)


def reward_loop(config: dict) -> None:
    import torch
    from transformers import AutoTokenizer

    from pez_core.rewrite.reward_model import (
        RegressionCollator,
        RegressionDataset,
        RewardModel,
        label_stats,
        load_backbone,
        regression_loss,
    )

    job: TrainJob = config["job"]
    cfg = job.algo
    run = Run(job)
    df = read_frame(job.data_uris, job.options)
    read, missing = len(df), df[cfg.score_column].isna()
    df = df[~missing]  # a row without its label teaches nothing (and would make every loss NaN)
    train_df, eval_df = split_eval(df, job.eval_fraction, job.seed)
    dropped = {f"{cfg.score_column} missing": int(missing.sum())} if missing.any() else {}
    run.account(read, dropped, len(eval_df), len(train_df))
    raws = list(train_df["raw_prompt"]) if "raw_prompt" in train_df else list(train_df["prompt"])
    scores = [float(s) for s in train_df[cfg.score_column]]
    mean, std = label_stats(scores)
    source = run.model_source(job.model)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = load_backbone(source, tokenizer, mean, std, kind=cfg.kind).to(run.device)
    dataset = RegressionDataset(tokenizer, cfg.kind, raws, list(train_df["prompt"]), scores,
                                model.config.reward_label_mean, model.config.reward_label_std, cfg.max_length)

    def evaluate(m):
        if len(eval_df) < 2:
            return None
        from pez_core.rewrite.ppo import unwrap

        rm = RewardModel(unwrap(m), tokenizer, cfg.kind, cfg.max_length, cfg.batch_size)
        eraws = list(eval_df["raw_prompt"]) if "raw_prompt" in eval_df else list(eval_df["prompt"])
        pred = rm.score(eraws, list(eval_df["prompt"]))
        truth = torch.tensor([float(s) for s in eval_df[cfg.score_column]])
        for p in m.parameters():
            p.requires_grad_(True)
        return {"eval_mse": float(((pred - truth) ** 2).mean()),
                "eval_pearson": float(torch.corrcoef(torch.stack([pred, truth]))[0, 1])}

    _fit_supervised(run, model, tokenizer, dataset, RegressionCollator(tokenizer.pad_token_id),
                    regression_loss, cfg, evaluate)


# ---- PPO ------------------------------------------------------------------------------------------
def ppo_loop(config: dict) -> None:
    import dataclasses
    import random

    import ray.train.torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pez_core.rewrite.optim import global_mean
    from pez_core.rewrite.ppo import PolicyWithValueHead, PPOTrainer, freeze_lower_layers
    from pez_core.rewrite.reward_model import CombinedReward, RewardModel
    from pez_core.rewrite.tokenizer import ensure_pad_token

    from pipelines.train.best import read_best, save_best

    job: TrainJob = config["job"]
    cfg = job.algo
    cfg = dataclasses.replace(cfg, total_steps=min(cfg.total_steps, job.max_steps or cfg.total_steps))
    run = Run(job)
    df = read_frame(job.data_uris, job.options, columns=["raw_prompt", "prompt"])
    n_eval = min(job.eval_prompts, len(df) // 2) if job.eval_interval else 0
    shuffled = df.sample(frac=1.0, random_state=job.seed)  # the same held-out raw prompts on every worker
    train_df, eval_df = (shuffled.iloc[n_eval:], shuffled.iloc[:n_eval]) if n_eval else (df, df.iloc[:0])
    run.account(len(df), {}, len(eval_df), len(train_df))
    rows = list(zip(train_df["raw_prompt"], train_df["prompt"]))[run.rank::run.world]  # this worker's prompts
    eval_rows = list(zip(eval_df["raw_prompt"], eval_df["prompt"]))
    eval_rows = eval_rows[run.rank::run.world] or eval_rows
    if not rows:
        raise ValueError(f"{', '.join(job.data_uris)}: no prompts for worker {run.rank} of {run.world}")
    source = run.model_source(job.model)
    tokenizer = AutoTokenizer.from_pretrained(source)
    ensure_pad_token(tokenizer)
    policy = PolicyWithValueHead.from_pretrained(source).to(run.device)
    freeze_lower_layers(policy.lm, cfg.num_layers_unfrozen)  # before DDP, which only syncs trainable tensors
    ref = AutoModelForCausalLM.from_pretrained(_local_folder(job.ref_model or job.model, job.options)).to(run.device)
    r_ps = RewardModel.from_pretrained(_local_folder(job.reward_ps, job.options), "ps", str(run.device)) \
        if job.reward_ps else None
    r_aes = RewardModel.from_pretrained(_local_folder(job.reward_aes, job.options), "aes", str(run.device)) \
        if job.reward_aes else None
    reward_fn = CombinedReward(r_ps, r_aes, job.alpha, relative=job.relative_reward)
    policy = ray.train.torch.prepare_model(policy)
    trainer = PPOTrainer(policy, ref, tokenizer, reward_fn, cfg)
    if run.state is not None:
        trainer.load_state_dict(run.state)
    total = cfg.collections  # collections of rollouts; cfg.total_steps counts optimiser updates
    best = read_best(job.output, job.options) if run.rank == 0 and job.output else None
    orders: dict[int, list[int]] = {}

    def take(step: int) -> list[tuple[str, str]]:
        """The rollout prompts of ``step``: reshuffled each pass, reproducible after a resume."""
        out = []
        for j in range(step * cfg.rollouts_per_step, (step + 1) * cfg.rollouts_per_step):
            epoch, i = divmod(j, len(rows))
            if epoch not in orders:
                rng = random.Random(job.seed * 100003 + epoch * 7919 + run.rank)
                orders[epoch] = rng.sample(range(len(rows)), len(rows))
            out.append(rows[orders[epoch][i]])
        return out

    while run.step < total and not trainer.done:
        run.maybe_fail()
        batch = take(run.step)
        before = trainer.updates_done
        stats = trainer.step([r for r, _ in batch], [p for _, p in batch])
        run.step += 1
        sample = stats.pop("sample")
        for k in ("pg_loss", "vf_loss", "clipfrac", "approx_kl", "ratio_dev", "first_ratio_dev"):
            stats[k] = global_mean(stats[k])  # the rest are already means over workers
        if eval_rows and (before // job.eval_interval < trainer.updates_done // job.eval_interval or trainer.done):
            stats["eval_reward"] = global_mean(trainer.evaluate([r for r, _ in eval_rows], [p for _, p in eval_rows]))
            if run.rank == 0 and (best is None or stats["eval_reward"] > best):
                best = stats["eval_reward"]
                save_best(job.output, job.options, policy, tokenizer, best, run.step, trainer.updates_done)
        metrics = {k: round(v, 6) for k, v in stats.items()}
        if run.rank == 0:
            metrics["sample"] = sample
        run.record(metrics, policy, tokenizer, trainer.state_dict, total)
    run.finish(policy, tokenizer, trainer.state_dict)


LOOPS = {"sft": sft_loop, "reward": reward_loop, "ppo": ppo_loop, "prompt-lm": prompt_lm_loop}
