"""`promptmine eval invert` end to end on a real local Ray, local storage and the moto S3 server.

Tiny models built offline stand in for SD 2 and the reference CLIP; a row's similarity is checked
against the same computation done by hand outside Ray.
"""

import json
import math

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.cli import main
from pipelines.io.samples import sample_records, webdataset_bytes
from pipelines.io.storage import StorageOptions


@pytest.fixture(scope="module")
def models(tiny_sd_dir, tiny_clip_dir):
    return ["--generator", str(tiny_sd_dir), "--steps", "2", "--size", "32", "--reference-clip", str(tiny_clip_dir),
            "--seeds", "2", "--actors", "1"]


def mined_table(rows):
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([("key", pa.string()), ("prompt", pa.string()),
                                                                ("caption", pa.string())])), sink)
    return sink.getvalue().to_pybytes()


def write_inputs(put):
    """Image shards 00000 (3 good) and 00001 (3 good + 3 bad), mined tables for 00000, 00001 and 00002."""
    records = {0: sample_records(0, 3, size=48), 1: sample_records(1, 3, bad=True, size=48)}
    for s, recs in records.items():
        put(f"images/{s:05d}.tar", webdataset_bytes(recs))
    put("mined/rows/00000.parquet", mined_table([
        {"key": "000000000", "prompt": "red circle blue sky", "caption": "sample 0-0"},
        {"key": "000000001", "prompt": "green square", "caption": None},  # no baseline text: scored as null
        {"key": "000000002", "prompt": "yellow stripes", "caption": "sample 0-2"}]))
    put("mined/rows/00001.parquet", mined_table([
        {"key": "000010000", "prompt": "a dark shape", "caption": "sample 1-0"},
        {"key": "000010001", "prompt": "bright noise", "caption": "sample 1-1"},
        {"key": "000010002", "prompt": "  ", "caption": "sample 1-2"},
        {"key": "000019997", "prompt": "truncated", "caption": "x"},
        {"key": "000019998", "prompt": "text file", "caption": "x"},
        {"key": "000019999", "prompt": "caption only", "caption": "x"},
        {"key": "000010099", "prompt": "not in the shard", "caption": "x"}]))
    put("mined/rows/00002.parquet", mined_table([{"key": "000020000", "prompt": "orphan", "caption": "x"}]))
    put("mined/rejects/00000.parquet", b"not read")  # a mine output's other folders are not input
    return records


def read_output(uri):
    out = StorageOptions.from_env().resolve(uri)
    rows = pd.read_parquet(out.child("rows").path, filesystem=out.fs)
    rejects = pd.read_parquet(out.child("rejects").path, filesystem=out.fs)
    return rows, rejects, json.loads(out.child("summary.json").read_text()), json.loads(
        out.child("metrics.json").read_text())


def test_eval_invert_local_rejects_metrics_and_resume(ray_cluster, tmp_path, models, tiny_sd_dir, tiny_clip_dir,
                                                      capsys):
    def put(rel, data):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)

    records = write_inputs(put)
    args = ["eval", "invert", "--input", str(tmp_path / "mined"), "--images", str(tmp_path / "images"),
            "--output", str(tmp_path / "out"), "--baseline-column", "caption", *models]
    assert main(args) == 0
    printed = capsys.readouterr().out
    rows, rejects, summary, metrics = read_output(str(tmp_path / "out"))

    assert sorted(rows["key"]) == ["000000000", "000000001", "000000002", "000010000", "000010001"]
    reasons = dict(zip(rejects["key"], rejects["reason"]))
    assert reasons["000010002"] == "empty prompt"
    assert reasons["000019997"].startswith("target image: corrupt or truncated image")
    assert reasons["000019998"] == "target image: not an image (unrecognised format)"
    assert reasons["000019999"] == "no image member (has: txt)"
    assert reasons["000010099"].startswith("no target image with this key in ") and "00001.tar" in reasons["000010099"]
    assert reasons["000020000"] == "no image shard '00002' in the images input"
    assert summary["totals"] == {"records": 11, "rows": 5, "rejects": 6, "balanced": True}

    # one row recomputed by hand: the same seeds, generator and reference CLIP outside Ray
    from pez_core.images import decode_image
    from pez_core.scoring import ClipScorer, GenerationConfig, Generator

    gen = Generator(GenerationConfig(model=str(tiny_sd_dir), steps=2, size=32))
    ref = ClipScorer(str(tiny_clip_dir))
    target = ref.image_features([decode_image(records[0][0]["jpg"])])
    by_key = rows.set_index("key")
    for column, text in (("", "red circle blue sky"), ("caption_", "sample 0-0")):
        sims = ref.image_similarity(gen.generate([text, text], [0, 1]), target)
        assert by_key.loc["000000000", f"{column}similarities"] == pytest.approx(sims.tolist(), abs=1e-4)
        assert by_key.loc["000000000", f"{column}similarity"] == pytest.approx(sims.mean().item(), abs=1e-4)
    assert pd.isna(by_key.loc["000000001", "caption"]) and math.isnan(by_key.loc["000000001", "caption_similarity"])
    assert pd.isna(by_key.loc["000000001", "caption_image"]) and by_key.loc["000000001", "image"][:2] == b"\xff\xd8"
    assert (rows["similarities"].map(len) == 2).all() and rows["target_image"].map(len).gt(100).all()

    # metrics: mean and a 95% CI around it over the rows; the paired difference over rows with both texts
    m = metrics["similarity"]["prompt"]
    assert m["n"] == 5 and m["mean"] == pytest.approx(rows["similarity"].mean(), abs=1e-6)
    assert m["ci95"][0] < m["mean"] < m["ci95"][1]
    assert metrics["similarity"]["caption"]["n"] == 4 and metrics["prompt_minus"]["caption"]["n"] == 4
    assert summary["metrics"] == metrics and "similarity.prompt" in printed and "win rate" in printed

    # rerun: nothing to do, no file rewritten; other settings are refused
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "rows").iterdir()}
    assert main(args) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "rows").iterdir()} == before
    assert main([*args, "--guidance", "3"]) == 2
    assert "settings.generation" in capsys.readouterr().err


def test_eval_invert_on_s3(ray_cluster, s3_env, models):
    bucket = s3_env.make_bucket("eval-invert")
    client = s3_env.client()
    write_inputs(lambda rel, data: client.put_object(Bucket=bucket, Key=rel, Body=data))
    assert main(["eval", "invert", "--input", f"s3://{bucket}/mined", "--images", f"s3://{bucket}/images",
                 "--output", f"s3://{bucket}/out", *models, "--seeds", "1"]) == 0
    rows, rejects, summary, metrics = read_output(f"s3://{bucket}/out")
    assert len(rows) == 5 and len(rejects) == 6 and "caption_similarity" not in rows.columns
    assert (rows["similarities"].map(len) == 1).all() and metrics["similarity"]["prompt"]["n"] == 5
    assert s3_env.secret_key not in json.dumps(summary)


@pytest.mark.parametrize("flags, message", [
    (["--baseline-column", "nope"], "no column(s) nope"),
    (["--baseline-column", "prompt"], "clashes with an output column"),
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--size", "30"], "multiple of 8"),
])
def test_eval_invert_flag_errors(tmp_path, models, capsys, flags, message):
    write_inputs(lambda rel, data: ((tmp_path / rel).parent.mkdir(parents=True, exist_ok=True),
                                    (tmp_path / rel).write_bytes(data)))
    assert main(["eval", "invert", "--input", str(tmp_path / "mined"), "--images", str(tmp_path / "images"),
                 "--output", str(tmp_path / "out"), *models, *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
