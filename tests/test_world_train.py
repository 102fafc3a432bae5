"""`promptmine world train` on a real local Ray: DDP over 2 workers, a worker killed mid-run in the reading
phase, the restart from the last checkpoint, and the published CLIP loaded through load_clip."""

import json

import pandas as pd
import torch

from pipelines.cli import main
from tests.test_world import TINY


def test_world_train_on_two_workers_survives_a_killed_worker(ray_cluster, tmp_path):
    config = tmp_path / "world-train-test.json"
    config.write_text(json.dumps(TINY))
    out, marker = tmp_path / "world", tmp_path / "killed.txt"
    assert main(["world", "train", "--output", str(out), "--config", str(config), "--steps", "3", "--read-steps", "3",
                 "--batch", "8", "--workers", "2", "--cpus-per-worker", "0.5", "--checkpoint-every", "2", "--log-every", "1",
                 "--eval-scenes", "4", "--max-failures", "1", "--inject-failure", f"5:{marker}"]) == 0
    assert marker.exists()  # a worker really died in the block holding step 5
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["world_size"] == 2  # 3 steps, then 3 of the reading phase
    assert summary["config"]["steps"] == 3 and summary["config"]["read_steps"] == 3
    first, resumed = summary["attempt_start_steps"]
    # restarted from a checkpoint, not from zero (Ray resumes from the last *registered* one: 2 or 4)
    assert first == 0 and resumed in (2, 4), summary
    assert set(summary["zero_shot"]) >= {"colour", "shape", "position", "relation"}
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["step"].tolist() == [0, 1, 2, 3, 4, 5]  # each step once across the two attempts
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    import open_clip

    from pez_core import load_clip
    from pez_core.world.train_clip import WorldTrainConfig, build_model

    clip = load_clip(str(out / "model"), device="cpu")  # the users' loading call
    open_clip.add_model_config(config)
    init = build_model(WorldTrainConfig(model="world-train-test", seed=0)).clip.state_dict()
    trained = clip.model.state_dict()
    changed = [k for k, v in init.items() if v.is_floating_point() and k in trained
               and not torch.allclose(trained[k], v.half().float(), atol=1e-3)]
    assert len(changed) > len(init) // 2, changed  # trained, not the seed's initial weights


def test_world_train_init_runs_only_the_reading_phase_from_a_trained_clip(ray_cluster, tmp_path):
    """--init world: the run starts at step 3000 from the shipped weights and trains the text tower only.
    Fails if --init is ignored (the run would start at 0 from the seed), if the image tower moves, or if
    nothing is trained."""
    from pez_core import load_clip

    out = tmp_path / "read"
    assert main(["world", "train", "--output", str(out), "--kind", "world", "--init", "world", "--read-steps", "2",
                 "--batch", "8", "--workers", "1", "--cpus-per-worker", "1", "--log-every", "1",
                 "--eval-scenes", "4"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3002 and summary["attempt_start_steps"] == [3000]
    assert pd.read_csv(out / "metrics.csv")["step"].tolist() == [3000, 3001]
    shipped = load_clip("world", device="cpu").model.state_dict()
    read = load_clip(str(out / "model"), device="cpu").model.state_dict()
    assert all(torch.equal(read[k], v) for k, v in shipped.items() if k.startswith("visual."))
    text = [k for k, v in shipped.items() if not k.startswith("visual.") and v.is_floating_point()]
    assert sum(not torch.equal(read[k], shipped[k]) for k in text) > len(text) // 2


def test_world_train_init_errors_name_the_problem(tmp_path, capsys):
    out = str(tmp_path / "x")
    assert main(["world", "train", "--output", out, "--init", "world"]) == 2
    assert "--init world: starts the reading phase from a trained CLIP; give --read-steps N" in capsys.readouterr().err
    assert main(["world", "train", "--output", out, "--kind", "world", "--init", "world-ref", "--read-steps", "2"]) == 2
    assert "--init world-ref: not a promptmine-world-rn CLIP" in capsys.readouterr().err
    assert main(["world", "train", "--output", out, "--init", str(tmp_path), "--read-steps", "2"]) == 2
    assert "has no open_clip_config.json" in capsys.readouterr().err
