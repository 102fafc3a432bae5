"""A `promptmine train` output folder as a model: best/ (PPO's highest held-out reward) before model/."""

import shutil

import pytest

from pez_core.rewrite.rewriter import training_output_model


def _fake_model(folder, tag):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(f'{{"tag": "{tag}"}}')
    (folder / "weights.bin").write_bytes(tag.encode())


def test_a_local_output_folder_resolves_to_best_then_model(tmp_path):
    out = tmp_path / "ppo"
    _fake_model(out / "model", "final")
    assert training_output_model(str(out)) == str(out / "model")
    _fake_model(out / "best", "best")
    assert training_output_model(str(out)) == str(out / "best")
    assert training_output_model(str(out / "model")) == str(out / "model")  # a model folder stays itself
    hub_id = "alibaba-pai/pai-bloom-1b1-text2prompt-sd"
    assert training_output_model(hub_id) == hub_id


def test_an_s3_output_folder_is_fetched_best_first(s3_env, tmp_path):
    from pipelines.train.best import fetch_model

    s3_env.make_bucket("outputs")
    s3 = s3_env.client()
    _fake_model(tmp_path / "ppo" / "model", "final")
    _fake_model(tmp_path / "ppo" / "best", "best")
    for path in (tmp_path / "ppo").rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), "outputs", f"runs/ppo/{path.relative_to(tmp_path / 'ppo')}")
    local = fetch_model("s3://outputs/runs/ppo")
    assert open(f"{local}/weights.bin").read() == "best"
    shutil.rmtree(local)
    local = fetch_model("s3://outputs/runs/ppo/model")  # a plain model folder
    assert open(f"{local}/weights.bin").read() == "final"
    with pytest.raises(FileNotFoundError, match="config.json"):
        fetch_model("s3://outputs/runs/nothing")
