"""`promptmine train` on a real local Ray (2 CPU workers, DDP over gloo), local and S3 storage, resume."""

import json
import os
import random

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from pipelines.cli import main

SUBJECTS = ["a cat", "a dog", "a castle", "a robot", "a fox", "a ship", "a dragon", "a forest", "a knight"]
STYLES = ["highly detailed", "artstation", "8k", "concept art", "sharp focus", "octane render", "masterpiece"]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """48 synthetic pairs: scores grow with the number of style tags in the high-quality prompt."""
    rng = random.Random(0)
    rows = []
    for _ in range(48):
        subject, k = rng.choice(SUBJECTS), rng.randint(0, 5)
        rows.append({"raw_prompt": subject, "prompt": ", ".join([subject, *rng.sample(STYLES, k)]),
                     "pick_score": 18 + 0.5 * k + rng.gauss(0, 0.1),
                     "aesthetic_score": 5 + 0.4 * k + rng.gauss(0, 0.05)})
    path = tmp_path_factory.mktemp("pairs") / "pairs.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return path


def train(*args) -> int:
    return main(["train", *map(str, args)])


def test_sft_on_two_workers_survives_a_killed_worker_and_publishes_the_model(ray_cluster, tiny_lm_dir, pairs,
                                                                             tmp_path, capsys):
    """One run covers DDP on 2 workers, checkpoints, a worker killed (os._exit) before step 5, the restart
    from the last checkpoint (FailureConfig(max_failures=1)), the score filters with their row accounting,
    and the published model and metrics."""
    out, marker = tmp_path / "sft", tmp_path / "killed.txt"
    assert train("sft", "--data", pairs, "--output", out, "--model", tiny_lm_dir, "--workers", 2, "--max-steps", 6,
                 "--batch-size", 4, "--lr", 2e-3, "--checkpoint-every", 2, "--keep-checkpoints", 2,
                 "--max-failures", 1, "--eval-fraction", 0.1, "--inject-failure", f"5:{marker}",
                 "--min-pick-score", 18.8, "--min-aesthetic-score", 6.1) == 0
    assert marker.exists()  # a worker really died before step 5
    summary = json.loads((out / "summary.json").read_text())
    # every row accounted for: read = dropped by each threshold (in order) + held out + trained on
    df = pd.read_parquet(pairs)
    low_ps = int((df["pick_score"] < 18.8).sum())
    low_aes = int(((df["pick_score"] >= 18.8) & (df["aesthetic_score"] < 6.1)).sum())
    assert low_ps and low_aes  # both thresholds really drop rows of this table
    held = max(1, int((48 - low_ps - low_aes) * 0.1))
    assert summary["data"] == {"read": 48, "dropped": {"pick_score < 18.8": low_ps, "aesthetic_score < 6.1": low_aes},
                               "eval": held, "trained_on": 48 - low_ps - low_aes - held}
    assert (f"data:    48 rows read, {low_ps + low_aes} dropped (pick_score < 18.8: {low_ps}; aesthetic_score < 6.1: "
            f"{low_aes}), {held} held out for evaluation") in capsys.readouterr().out
    assert summary["world_size"] == 2 and summary["steps"] == 6
    first, resumed = summary["attempt_start_steps"]
    assert first == 0 and resumed in (2, 4), summary  # restarted from a checkpoint, not from zero
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["step"].tolist() == [1, 2, 3, 4, 5, 6]  # each step once, across the two attempts
    assert metrics["loss"].iloc[-2:].mean() < metrics["loss"].iloc[:2].mean()
    assert metrics["lr"].iloc[-1] < metrics["lr"].max()  # cosine decay, its state restored on resume
    assert "eval_loss" in metrics and metrics["eval_loss"].notna().sum() == 1  # held-out loss at the end
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 6
    trained = AutoModelForCausalLM.from_pretrained(out / "model")  # the users' loading call
    base = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), base.state_dict().values()))
    # Ray tracks num_to_keep=2 checkpoints (the last at step 6); a checkpoint written by the first attempt
    # but not yet registered when the worker died may be left on disk beside them.
    snapshot = json.loads((out / "checkpoints" / "sft" / "checkpoint_manager_snapshot.json").read_text())
    tracked = [c["checkpoint_dir_name"] for c in snapshot["checkpoint_results"]]
    assert len(tracked) == 2 and snapshot["checkpoint_results"][-1]["metrics"]["step"] == 6
    assert all((out / "checkpoints" / "sft" / name / "model" / "config.json").exists() for name in tracked)


def test_reward_model_with_data_checkpoints_and_output_on_s3(ray_cluster, s3_env, tiny_lm_dir, pairs, tmp_path):
    from pez_core.rewrite.reward_model import RewardModel

    s3 = s3_env.client()
    s3_env.make_bucket("train-rm")
    unlabelled = pd.read_parquet(pairs)
    unlabelled.loc[[3, 10, 20], "pick_score"] = float("nan")  # rows the labelling never scored
    unlabelled.to_parquet(tmp_path / "pairs.parquet")
    s3.upload_file(str(tmp_path / "pairs.parquet"), "train-rm", "data/pairs.parquet")
    pd.read_parquet(pairs).iloc[:8].to_parquet(tmp_path / "more.parquet")  # a second table, local
    assert train("reward", "--kind", "ps", "--data", "s3://train-rm/data", "--data", tmp_path / "more.parquet",
                 "--output", "s3://train-rm/r_ps",
                 "--model", tiny_lm_dir, "--workers", 2, "--epochs", 2, "--max-steps", 4, "--batch-size", 8,
                 "--lr", 1e-3,
                 "--checkpoint-every", 2, "--eval-fraction", 0.2) == 0
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="train-rm", Prefix="r_ps/")["Contents"]]
    published = {"r_ps/model/config.json", "r_ps/model/model.safetensors", "r_ps/metrics.csv", "r_ps/summary.json"}
    assert published <= set(keys)
    assert any(k.startswith("r_ps/checkpoints/reward-ps/checkpoint_") and k.endswith("state.pt") for k in keys)
    local = tmp_path / "r_ps"
    for key in keys:
        if key.startswith("r_ps/model/"):
            (local / key[len("r_ps/model/"):]).parent.mkdir(parents=True, exist_ok=True)
            s3.download_file("train-rm", key, str(local / key[len("r_ps/model/"):]))
    rm = RewardModel.from_pretrained(local)
    assert rm.kind == "ps" and rm.mean > 17  # label scale of pick_score kept in the config (no NaN in it)
    s3.download_file("train-rm", "r_ps/summary.json", str(tmp_path / "summary.json"))
    data = json.loads((tmp_path / "summary.json").read_text())["data"]
    assert data == {"read": 56, "dropped": {"pick_score missing": 3}, "eval": 10, "trained_on": 43}  # both tables
    assert torch.isfinite(rm.score(["a cat"], ["a cat, 8k"])).all()
    s3.download_file("train-rm", "r_ps/metrics.csv", str(tmp_path / "m.csv"))
    metrics = pd.read_csv(tmp_path / "m.csv")
    assert metrics["step"].tolist() == [1, 2, 3, 4] and metrics["eval_pearson"].notna().iloc[-1]


def test_ppo_on_two_workers_with_a_reward_model_on_s3(ray_cluster, s3_env, tiny_lm_dir, pairs, tmp_path,
                                                       monkeypatch):
    from transformers import AutoTokenizer

    from pez_core.rewrite.ppo import VALUE_HEAD_FILE, PolicyWithValueHead
    from pez_core.rewrite.reward_model import load_backbone

    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    r_aes = load_backbone(tiny_lm_dir, tok, 5.0, 1.0, kind="aes")  # an untrained head is enough to wire PPO
    r_aes.save_pretrained(tmp_path / "r_aes")
    tok.save_pretrained(tmp_path / "r_aes")
    s3 = s3_env.client()
    s3_env.make_bucket("train-ppo")
    for path in (tmp_path / "r_aes").iterdir():
        s3.upload_file(str(path), "train-ppo", f"r_aes/{path.name}")
    out = tmp_path / "ppo"
    monkeypatch.chdir(tmp_path)  # relative --data and --output: workers run elsewhere, the CLI resolves them
    assert train("ppo", "--data", os.path.relpath(pairs), "--output", "ppo", "--model", tiny_lm_dir,
                 "--reward-aes", "s3://train-ppo/r_aes", "--alpha", 0, "--workers", 2, "--max-steps", 12,
                 "--rollouts-per-step", 8, "--chunk-size", 8,
                 "--minibatch-size", 4, "--ppo-epochs", 2, "--max-new-tokens", 6, "--lr", 1e-4,
                 "--checkpoint-every", 2, "--eval-interval", 8, "--eval-prompts", 4) == 0
    metrics = pd.read_csv(out / "metrics.csv")
    # --max-steps counts optimiser updates, as trlx: 8 rollouts / minibatch 4 x 2 epochs = 4 per collection
    assert metrics["step"].tolist() == [1, 2, 3] and metrics["updates"].tolist() == [4, 8, 12]
    assert metrics["eval_reward"].notna().tolist() == [False, True, True]  # every 8 updates and at the end
    best = json.loads((out / "best" / "best.json").read_text())
    assert best["eval_reward"] == pytest.approx(metrics["eval_reward"].max(), abs=1e-5)
    from pez_core.rewrite.rewriter import Rewriter

    assert Rewriter.from_pretrained(str(out)).model.config.model_type == "bloom"  # OUTPUT serves OUTPUT/best
    for column in ("score", "kl", "kl_coef", "pg_loss", "vf_loss", "response_tokens", "sample"):
        assert column in metrics, column
    assert (metrics["kl_coef"] <= 0.05).all() and metrics["kl_coef"].iloc[-1] < 0.05  # KL < target 6: coef falls
    assert (out / "model" / VALUE_HEAD_FILE).exists()
    policy = PolicyWithValueHead.from_pretrained(out / "model")
    assert policy.lm.config.model_type == "bloom"
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2


def test_bad_inputs_fail_fast_with_one_line_errors(tiny_lm_dir, pairs, tmp_path, capsys):
    """Checked on the driver before any Ray job starts: exit status 2 and a message naming the problem."""
    no_scores = tmp_path / "no_scores.parquet"
    pd.read_parquet(pairs).drop(columns=["pick_score"]).to_parquet(no_scores)
    assert train("reward", "--kind", "ps", "--data", no_scores, "--output", tmp_path / "o", "--model", tiny_lm_dir) == 2
    assert "missing column(s) pick_score" in capsys.readouterr().err
    assert train("reward", "--kind", "ps", "--data", pairs, "--data", no_scores, "--output", tmp_path / "o",
                 "--model", tiny_lm_dir) == 2
    assert f"--data {no_scores}: missing column(s) pick_score" in capsys.readouterr().err  # names the bad table
    assert train("sft", "--data", no_scores, "--output", tmp_path / "o", "--model", tiny_lm_dir,
                 "--min-pick-score", 12) == 2
    assert "missing column(s) pick_score" in capsys.readouterr().err
    assert train("ppo", "--data", pairs, "--output", tmp_path / "o", "--model", tiny_lm_dir) == 2
    assert "--reward-ps and/or --reward-aes" in capsys.readouterr().err
    assert train("sft", "--data", tmp_path / "absent.parquet", "--output", tmp_path / "o", "--model", tiny_lm_dir) == 2
    assert "absent.parquet" in capsys.readouterr().err
    assert train("sft", "--data", pairs, "--output", tmp_path / "o", "--model", tiny_lm_dir, "--template", "v9") == 2
    assert "unknown template 'v9'" in capsys.readouterr().err


_QUIET_RUN = """
import os, sys, tempfile, time
from pipelines.io.storage import Location
from pipelines.train.trainer import fit

def loop(cfg):
    import ray.train
    time.sleep(4)  # long enough for Ray Train's PlacementGroupCleaner to poll the controller a few times
    folder = tempfile.mkdtemp()
    open(os.path.join(folder, "done"), "w").write("1")
    ray.train.report({"step": 1}, checkpoint=ray.train.Checkpoint.from_directory(folder))

fit(loop, {}, Location(uri=sys.argv[1]), "quiet", 1)
print("FIT DONE")
"""


def test_a_local_training_cluster_lets_ray_train_watch_its_controller(tmp_path):
    """`fit` on a cluster of its own (no address) starts the dashboard, whose State API Ray Train's
    PlacementGroupCleaner polls once a second; started without it (the old `include_dashboard=False`), the
    run logs "Failed to query Ray Train Controller actor state" on every poll, about 150 lines per stage."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.getcwd(), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", _QUIET_RUN, str(tmp_path / "out")], capture_output=True, text=True,
                          env=env, timeout=240)
    log = done.stdout + done.stderr
    assert done.returncode == 0 and "FIT DONE" in log, log[-3000:]
    assert "Failed to query Ray Train Controller actor state" not in log, log[-3000:]
