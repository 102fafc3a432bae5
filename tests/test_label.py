"""`promptmine label` end to end (local and S3): labels equal a manual computation and are read by
the reward-model training's own table reader."""

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.cli import main
from pipelines.io.storage import StorageOptions

PAIRS = [
    [{"raw_prompt": "a cat", "prompt": "a cat, highly detailed, digital painting"},
     {"raw_prompt": "a castle", "prompt": "a castle at dusk, matte painting, artstation"},
     {"raw_prompt": "a dog", "prompt": None}],  # no prompt: a reject, not a failure
    [{"raw_prompt": "a robot", "prompt": "a robot, octane render, 8k"}],
]


def pairs_bytes(rows, row_group_size=None):
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([("raw_prompt", pa.string()), ("prompt", pa.string())])),
                   sink, row_group_size=row_group_size)
    return sink.getvalue().to_pybytes()


@pytest.fixture(scope="module")
def scorer_flags(tiny_sd_dir, tiny_pickscore_dir, tiny_aesthetic_path):
    return ["--generator", str(tiny_sd_dir), "--steps", "2", "--size", "32", "--pickscore", str(tiny_pickscore_dir),
            "--pickscore-processor", str(tiny_pickscore_dir), "--aesthetic-weights", str(tiny_aesthetic_path),
            "--aesthetic-clip", "tiny", "--actors", "1"]


def test_label_local_matches_manual_scores_and_feeds_reward_training(ray_cluster, tmp_path, scorer_flags,
                                                                     tiny_sd_dir, tiny_pickscore_dir,
                                                                     tiny_aesthetic_path, capsys):
    (tmp_path / "pairs").mkdir()
    for i, rows in enumerate(PAIRS):
        (tmp_path / "pairs" / f"part-{i}.parquet").write_bytes(pairs_bytes(rows))
    args = ["label", "--input", str(tmp_path / "pairs"), "--output", str(tmp_path / "labels"), "--seeds", "2",
            *scorer_flags]
    assert main(args) == 0
    out = capsys.readouterr().out
    rows = pd.read_parquet(tmp_path / "labels" / "rows").set_index("key")
    rejects = pd.read_parquet(tmp_path / "labels" / "rejects")
    assert sorted(rows.index) == ["part-0:0", "part-0:1", "part-1:0"]
    assert list(rejects["key"]) == ["part-0:2"] and list(rejects["reason"]) == ["empty prompt"]
    assert (rows["seeds"] == 2).all() and "--data " + str(tmp_path / "labels") + "/rows" in out

    # by hand: images of the prompt over seeds 0 and 1, PickScore against the RAW prompt, averaged
    from pez_core.scoring import AestheticScorer, GenerationConfig, Generator, PickScorer

    gen = Generator(GenerationConfig(model=str(tiny_sd_dir), steps=2, size=32, guidance=7.5))
    images = gen.generate([PAIRS[0][1]["prompt"]] * 2, [0, 1])
    pick = PickScorer(str(tiny_pickscore_dir), str(tiny_pickscore_dir)).score(["a castle"] * 2, images)
    aes = AestheticScorer(tiny_aesthetic_path, clip="tiny").score(images)
    assert rows.loc["part-0:1", "pick_score"] == pytest.approx(pick.mean().item(), abs=1e-3)
    assert rows.loc["part-0:1", "aesthetic_score"] == pytest.approx(aes.mean().item(), abs=1e-4)
    assert rows.loc["part-0:1", "pick_score_std"] == pytest.approx(pick.std().item(), abs=1e-3)

    # the training job's reader and required columns accept the rows folder as --data
    from pipelines.io.parquet import read_frame
    from pipelines.train.loops import REQUIRED_COLUMNS

    table = read_frame(str(tmp_path / "labels" / "rows"), StorageOptions())
    needed = {*REQUIRED_COLUMNS["reward"], *REQUIRED_COLUMNS["ppo"], "pick_score", "aesthetic_score", "raw_prompt"}
    assert needed <= set(table.columns) and len(table) == 3
    assert table["pick_score"].between(-100, 100).all() and table["aesthetic_score"].notna().all()

    # resume: nothing to do; the summary's label metrics are the means of the rows
    assert main(args) == 0
    assert "nothing to do" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "labels" / "metrics.json").read_text())
    assert metrics["pick_score"]["mean"] == pytest.approx(rows["pick_score"].mean(), abs=1e-5)


def test_label_on_s3_one_file_split_by_row_groups(ray_cluster, s3_env, scorer_flags):
    """--rows-per-shard cuts one Parquet file into shards of whole row groups (one per actor, resumable
    each); the default keys stay the file's row numbers, as without the split."""
    bucket = s3_env.make_bucket("label-pairs")
    client = s3_env.client()
    client.put_object(Bucket=bucket, Key="pairs.parquet", Body=pairs_bytes(PAIRS[0] + PAIRS[1], row_group_size=2))
    assert main(["label", "--input", f"s3://{bucket}/pairs.parquet", "--output", f"s3://{bucket}/labels",
                 "--seeds", "1", "--rows-per-shard", "2", *scorer_flags]) == 0
    out = StorageOptions.from_env().resolve(f"s3://{bucket}/labels")
    rows = pd.read_parquet(out.child("rows").path, filesystem=out.fs)
    assert sorted(rows["key"]) == ["pairs:0", "pairs:1", "pairs:3"]
    assert dict(zip(rows["key"], rows["shard"])) == {"pairs:0": "pairs@00000", "pairs:1": "pairs@00000",
                                                     "pairs:3": "pairs@00001"}
    assert dict(zip(rows["key"], rows["raw_prompt"]))["pairs:3"] == "a robot"
    assert (rows["pick_score_std"] == 0).all() and rows["pick_score"].notna().all()
    rejects = pd.read_parquet(out.child("rejects").path, filesystem=out.fs)
    assert list(zip(rejects["key"], rejects["shard"])) == [("pairs:2", "pairs@00001")]
    summary = json.loads(out.child("summary.json").read_text())
    assert summary["totals"] == {"records": 4, "rows": 3, "rejects": 1, "balanced": True}
    assert summary["shards"]["total"] == 2
    manifest = json.loads(out.child("_job.json").read_text())
    assert manifest["settings"]["rows_per_shard"] == 2


def test_label_aesthetic_weights_checked_before_any_work(tmp_path, scorer_flags, capsys):
    (tmp_path / "p.parquet").write_bytes(pairs_bytes(PAIRS[1]))
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    base = ["label", "--input", str(tmp_path / "p.parquet"), "--output", str(tmp_path / "o"), *scorer_flags]
    flags = base[: base.index("--aesthetic-weights")] + base[base.index("--aesthetic-weights") + 2:]
    assert main(flags) == 2
    assert "--aesthetic-weights PATH is required" in capsys.readouterr().err
    assert main([*flags, "--aesthetic-weights", str(tmp_path / "bad.pth")]) == 2
    assert "bad.pth" in capsys.readouterr().err and not (tmp_path / "o").exists()
