"""``promptmine world train``: a CLIP trained contrastively on promptmine's world, as a Ray Train job.

    promptmine world train --output world-clip                       # the shipped `world` preset's recipe
    promptmine world train --output s3://b/world-ref --kind world-ref --workers 2

The steps themselves are pez_core.world.train_clip's (plain torch; the batch of step k is a function of
(seed, k) only, and rank r of w trains on its slice of it), so a resumed run trains on exactly the data
an uninterrupted one would. Each Ray Train worker runs :func:`world_loop`: build the model from the seed,
resume from the last checkpoint (model, optimiser, step, loss history), wrap it in DDP, train
``--checkpoint-every`` steps at a time and report a checkpoint after each block. At the end the driver
publishes, to OUTPUT (local or s3://):

    OUTPUT/model/          open_clip_config.json + fp16 weights: load_clip(OUTPUT/model), --model OUTPUT/model
    OUTPUT/metrics.csv     step, loss, clip_loss, aux_loss every --log-every steps
    OUTPUT/loss.png        the loss curve
    OUTPUT/summary.json    the config, steps, time, workers, zero-shot accuracy per attribute
    OUTPUT/checkpoints/    Ray Train checkpoints (a rerun with the same --run-name resumes)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.train.faults import die_once
from pipelines.train.faults import parse as parse_fault

log = logging.getLogger(__name__)

KINDS = {"world": "promptmine-world-rn", "world-ref": "promptmine-world-ref-rn"}  # --kind -> open_clip config
SEEDS = {"world": 0, "world-ref": 1}  # the shipped presets' seeds (independently seeded models)
# where a kind's shipped recipe differs from the WorldTrainConfig defaults (world-ref: the first release's)
RECIPES = {"world": {}, "world-ref": {"steps": 1500, "hard_negatives": 0}}


@dataclass
class WorldJob:
    """What every worker needs (shipped in train_loop_config)."""

    cfg: object  # pez_core.world.train_clip.WorldTrainConfig
    config_file: str | None = None  # an open_clip config JSON of the user's (registered in every process)
    init: str | None = None  # a trained world CLIP (preset or folder): skip the first phase, read from it
    checkpoint_every: int = 250  # steps between checkpoints (and at the end)
    log_every: int = 50  # steps between loss-history rows
    inject_failure: tuple[int, str] | None = field(default=None, repr=False)  # (step, marker file): tests only


def world_loop(config: dict) -> None:
    """One Ray Train worker: resume, train in blocks of checkpoint_every steps, report checkpoints."""
    import ray.train
    import ray.train.torch
    import torch

    from pez_core.world.train_clip import (TrainState, build_model, build_optimiser, load_state_dict, state_dict,
                                           train_steps)

    job: WorldJob = config["job"]
    cfg = job.cfg
    _register(job.config_file)
    torch.set_num_threads(cfg.threads)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    model = build_model(cfg)
    optimiser = build_optimiser(model, cfg)
    state, starts = TrainState(), []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            saved = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=False)
        state = load_state_dict(model, optimiser, saved)
        starts = saved.get("starts", [])
    elif job.init is not None:  # the reading phase only, from a trained CLIP (its first phase is done)
        model.clip.load_state_dict(_init_weights(job.init))
        state.step = cfg.steps
    starts.append(state.step)
    log.info("world rank %d/%d starts at step %d", rank, world, state.step)
    model = ray.train.torch.prepare_model(model)  # DDP when world > 1 (the optimiser holds the same tensors)
    while state.step < cfg.total_steps:
        end = min(cfg.total_steps, (state.step // job.checkpoint_every + 1) * job.checkpoint_every)
        _maybe_fail(job, state.step, end, rank, world)
        train_steps(model, optimiser, state, cfg, state.step, end, rank=rank, world_size=world,
                    log_every=job.log_every)
        last = state.history[-1]
        metrics = {"step": state.step, "loss": last[1], "clip_loss": last[2], "aux_loss": last[3]}
        with tempfile.TemporaryDirectory(prefix="promptmine-world-ckpt-") as d:
            ckpt = None
            if rank == 0:
                torch.save({**state_dict(model, optimiser, state, cfg), "starts": starts, "world_size": world},
                           Path(d) / "state.pt")
                ckpt = ray.train.Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=ckpt)


def _init_weights(spec: str) -> dict:
    """The weights of the trained world CLIP ``spec`` (a preset or a save_clip folder), as fp32."""
    from pez_core import load_clip

    return load_clip(spec, device="cpu").model.state_dict()


def _check_init(spec: str, cfg) -> None:
    """--init must name a CLIP of the architecture being trained, and there must be a reading phase."""
    from pez_core.world.train_clip import build_model

    if not cfg.read_steps:
        raise ValueError(f"--init {spec}: starts the reading phase from a trained CLIP; give --read-steps N")
    try:
        weights = _init_weights(spec)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"--init {spec}: {e}") from None
    want = build_model(cfg).clip.state_dict()
    wrong = [k for k in want if k not in weights or weights[k].shape != want[k].shape]
    if wrong:
        raise ValueError(f"--init {spec}: not a {cfg.model} CLIP ({len(wrong)} weights missing or of another "
                         f"shape, e.g. {wrong[0]}); give the --kind or --config it was trained with")


def _register(config_file: str | None) -> None:
    """Register the user's open_clip config JSON (--config FILE) in this process."""
    if config_file:
        import open_clip

        open_clip.add_model_config(config_file)


def _maybe_fail(job: WorldJob, start: int, end: int, rank: int, world: int) -> None:
    """Fault injection for the resume test: the last rank dies once, in the block holding the given step."""
    if job.inject_failure is None:
        return
    step, marker = job.inject_failure
    if start < step <= end and rank == world - 1:
        die_once(marker, rank, step)


# ---- the driver ------------------------------------------------------------------------------------
def build_job(args) -> WorldJob:
    from pez_core.world.train_clip import WorldTrainConfig

    for name in ("workers", "checkpoint_every", "keep_checkpoints", "steps", "log_every"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    given = {"steps": args.steps, "batch": args.batch, "lr": args.lr, "hard_negatives": args.hard_negatives,
             "read_steps": args.read_steps}
    config_file = None
    if args.config and args.config.endswith(".json"):
        if not os.path.isfile(args.config):
            raise ValueError(f"--config {args.config}: no such file")
        config_file = os.path.abspath(args.config)
    cfg = WorldTrainConfig(model=Path(config_file).stem if config_file else (args.config or KINDS[args.kind]),
                           seed=args.seed if args.seed is not None else SEEDS[args.kind],
                           threads=max(1, int(args.cpus_per_worker)),
                           **{**RECIPES.get(args.kind, {}), **{k: v for k, v in given.items() if v is not None}})
    if cfg.batch % args.workers:
        raise ValueError(f"--batch {cfg.batch} must be divisible by --workers {args.workers}")
    init = args.init
    if init is not None:
        if os.path.isdir(os.path.expanduser(init)):
            init = os.path.abspath(os.path.expanduser(init))  # workers run elsewhere
        _register(config_file)
        _check_init(init, cfg)
    return WorldJob(cfg=cfg, config_file=config_file, init=init, checkpoint_every=args.checkpoint_every,
                    log_every=args.log_every, inject_failure=parse_fault(args.inject_failure))


def publish(checkpoint, out, job: WorldJob, eval_scenes: int) -> dict:
    """The trained CLIP to OUTPUT/model, its zero-shot accuracy, metrics.csv and loss.png."""
    import pandas as pd
    import torch

    from pez_core.world.train_clip import as_clip, build_model, build_optimiser, load_state_dict, save_world_clip
    from pez_core.world.zeroshot import zero_shot

    from pipelines.train.plot import line_plot_png

    cfg = job.cfg
    _register(job.config_file)
    with checkpoint.as_directory() as d:
        saved = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=False)
    model = build_model(cfg)
    state = load_state_dict(model, build_optimiser(model, cfg), saved)
    model.eval()
    t0 = time.monotonic()
    accuracy = zero_shot(as_clip(model, cfg), n=eval_scenes) if eval_scenes else {}
    eval_seconds = round(time.monotonic() - t0, 1)
    with tempfile.TemporaryDirectory(prefix="promptmine-world-model-") as d:
        save_world_clip(model, d, cfg, state, extra={"zero_shot": accuracy, "eval_scenes": eval_scenes})
        for path in sorted(Path(d).rglob("*")):
            if path.is_file():
                out.child("model", str(path.relative_to(d))).write_bytes(path.read_bytes())
    history = pd.DataFrame(state.history, columns=["step", "loss", "clip_loss", "aux_loss"])
    out.child("metrics.csv").write_text(history.to_csv(index=False))
    out.child("loss.png").write_bytes(line_plot_png(
        history["step"].tolist(), {c: history[c].tolist() for c in ("loss", "clip_loss", "aux_loss")},
        title=f"{cfg.model}: training loss", xlabel="step"))
    return {"config": dataclasses.asdict(cfg), "steps": state.step, "train_seconds": round(state.seconds, 1),
            "world_size": saved.get("world_size", 1), "attempt_start_steps": saved.get("starts", []),
            "zero_shot": accuracy, "eval_scenes": eval_scenes, "eval_seconds": eval_seconds,
            "model": out.child("model").uri, "metrics": out.child("metrics.csv").uri,
            "loss_plot": out.child("loss.png").uri}


def cmd_world_train(args) -> int:
    from pipelines.train.trainer import fit, storage_options, user_errors

    with user_errors():
        job = build_job(args)
        if "://" not in args.output:
            args.output = os.path.abspath(os.path.expanduser(args.output))  # workers run elsewhere
        out = storage_options(args, [args.output]).resolve(args.output)
        t0 = time.monotonic()
        result = fit(world_loop, {"job": job}, out, args.run_name or args.kind, args.workers, args.gpus_per_worker,
                     args.cpus_per_worker, args.keep_checkpoints, args.max_failures, args.address)
        summary = publish(result.checkpoint, out, job, args.eval_scenes)
    summary["seconds"] = round(time.monotonic() - t0, 1)
    out.child("summary.json").write_text(json.dumps(summary, indent=2))
    acc = "  ".join(f"{k} {v:.3f}" for k, v in summary["zero_shot"].items())
    print(f"world train: {summary['config']['model']} seed {summary['config']['seed']}, {summary['steps']} steps "
          f"on {summary['world_size']} workers in {summary['seconds']} s (attempts started at steps "
          f"{summary['attempt_start_steps']})")
    print(f"  zero-shot accuracy ({summary['eval_scenes']} held-out scenes): {acc or 'not measured'}")
    print(f"  model:   {summary['model']}   (load_clip(...), --model ...)")
    print(f"  metrics: {summary['metrics']}   loss plot: {summary['loss_plot']}")
    sys.stdout.flush()
    return 0


def register(subparsers) -> None:
    from pipelines.train.cli import add_ray_train_args

    p = subparsers.add_parser("world", help="promptmine's world: train the world CLIP (Ray Train), the aesthetic "
                                            "stand-in and the rewriter's base LM",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="world_command", metavar="COMMAND", required=True)
    t = sub.add_parser("train", help="train a world CLIP contrastively on rendered scenes (Ray Train)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--output", required=True, help="output folder (local or s3://): model/, metrics, checkpoints/")
    t.add_argument("--kind", default="world", choices=sorted(KINDS),
                   help="world: the CLIP PEZ optimises against; world-ref: the differently shaped, independently "
                        "seeded reference CLIP that scores regenerated images (default world)")
    t.add_argument("--config", help="another open_clip config: a registered name or a JSON file (default: the kind's own)")
    t.add_argument("--seed", type=int, help="model and data seed (default: world 0, world-ref 1, as shipped)")
    t.add_argument("--steps", type=int, help="optimiser steps of the first phase (default: the recipe's)")
    t.add_argument("--read-steps", type=int, help="steps of a reading phase after them (default 0; 600 measured): "
                   "the text tower only, a fresh AdamW at lr 5e-4, hard negatives that insert a contradicting "
                   "word or leave a named one out (docs/world.md; not yet in the shipped recipe)")
    t.add_argument("--init", help="a trained world CLIP (a preset such as world, or a folder this command wrote): "
                   "skip the first phase and run only the reading phase from its weights (needs --read-steps; "
                   "--seed then picks the reading phase's batches)")
    t.add_argument("--batch", type=int, help="global batch, split over workers (default: the recipe's)")
    t.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's)")
    t.add_argument("--hard-negatives", type=int, help="false captions per image close to its own, as extra "
                   "image-to-text negatives (default: the recipe's, 2; 0: plain InfoNCE)")
    t.add_argument("--eval-scenes", type=int, default=200, help="held-out scenes per attribute for the zero-shot "
                                                               "accuracy at the end (200; 0 skips it)")
    t.add_argument("--log-every", type=int, default=50, help="steps between loss rows in metrics.csv (50)")
    add_ray_train_args(t, run_name_default="the kind")
    t.set_defaults(func=cmd_world_train, checkpoint_every=250)
    from pipelines.train import world_tools

    world_tools.register(sub)  # train-aesthetic, init-lm: the world rewriting loop's models
