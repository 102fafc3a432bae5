"""Train a world CLIP and print its zero-shot accuracy as JSON (a single process, no Ray).

    python bench/world_clip.py --model promptmine-world --steps 2000 --out /tmp/world
"""

import argparse
import json
import logging
import sys
import time

import torch


def main(argv=None) -> int:
    from pez_core.world.train_clip import (TrainState, WorldTrainConfig, as_clip, build_model, build_optimiser,
                                           save_world_clip, train_steps)
    from pez_core.world.zeroshot import zero_shot

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="promptmine-world", help="open_clip config name, or a JSON file of one")
    p.add_argument("--steps", type=int, default=2000, help="optimiser steps")
    p.add_argument("--batch", type=int, default=128, help="batch size")
    p.add_argument("--lr", type=float, default=2e-3, help="peak lr")
    p.add_argument("--aux-weight", type=float, default=1.0, help="aux head loss weight at step 0")
    p.add_argument("--aux-until", type=float, default=0.6, help="share of steps the aux weight decays over")
    p.add_argument("--filler", type=float, default=0.3, help="chance of random filler tokens in a caption")
    p.add_argument("--seed", type=int, default=0, help="init and data seed")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--eval-n", type=int, default=200, help="held-out scenes per attribute")
    p.add_argument("--save-every", type=int, default=250, help="save the model to --out every N steps")
    p.add_argument("--out", default=None, help="folder to save the model to (fp16, load_clip-compatible)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(a.threads)
    model_name = a.model
    if model_name.endswith(".json"):
        import open_clip
        from pathlib import Path
        open_clip.add_model_config(model_name)
        model_name = Path(model_name).stem
    cfg = WorldTrainConfig(model=model_name, steps=a.steps, batch=a.batch, lr=a.lr, aux_weight=a.aux_weight,
                           aux_until=a.aux_until, filler=a.filler, seed=a.seed, threads=a.threads)
    t0 = time.time()
    model = build_model(cfg)
    opt, state = build_optimiser(model, cfg), TrainState()
    for start in range(0, cfg.steps, a.save_every):
        train_steps(model, opt, state, cfg, start, min(cfg.steps, start + a.save_every))
        if a.out:
            save_world_clip(model, a.out, cfg, state, extra={"partial": state.step < cfg.steps,
                                                             "cpu_s": time.process_time()})
            model.train()
    train_s = time.time() - t0
    model.eval()
    zs = zero_shot(as_clip(model, cfg), n=a.eval_n)
    out = {"config": vars(a), "train_s": round(train_s, 1), "cpu_s": round(time.process_time(), 1), "zero_shot": zs, "history": state.history[::4] + state.history[-1:]}
    if a.out:
        save_world_clip(model, a.out, cfg, state, extra={"zero_shot": zs})
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
