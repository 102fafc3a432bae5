"""`promptmine mine` end to end on a real local Ray and a real S3 server (moto) on 127.0.0.1.

Each test runs the real console entry point (pipelines.cli.main) in-process on the session Ray.
"""

import json

import pandas as pd
import pytest

from pipelines.cli import main
from pipelines.io.samples import parquet_bytes, sample_records, webdataset_bytes
from pipelines.io.storage import StorageOptions

FAST = ["--preset", "tiny", "--steps", "3", "--prompt-len", "4", "--batch-size", "4", "--actors", "1"]
ROW_COLUMNS = ["key", "shard", "caption", "prompt", "token_ids", "cosine", "model", "steps", "best_step", "seconds"]


def put_shards(server, bucket, prefix, shards, fmt="webdataset", per_shard=3, bad_shard=None, start=0):
    """Upload sample shards through boto3 (not our code); returns {key: caption} of every record."""
    client = server.client()
    expected = {}
    for s in range(start, start + shards):
        records = sample_records(s, per_shard, bad=(s == bad_shard), size=48)
        body, ext = (webdataset_bytes(records), "tar") if fmt == "webdataset" else (parquet_bytes(records), "parquet")
        client.put_object(Bucket=bucket, Key=f"{prefix}/{s:05d}.{ext}", Body=body)
        expected.update({r["key"]: r["caption"] for r in records})
    return expected


def read_output(uri):
    """rows, rejects (pandas, read straight from storage), stats markers and summary of an output."""
    opts = StorageOptions.from_env()
    out = opts.resolve(uri)
    rows = pd.read_parquet(out.child("rows").path, filesystem=out.fs)
    rejects = pd.read_parquet(out.child("rejects").path, filesystem=out.fs)
    stats = {loc.name: json.loads(loc.read_text()) for loc, _ in out.child("stats").list_files()}
    summary = json.loads(out.child("summary.json").read_text())
    return rows, rejects, stats, summary


def test_webdataset_and_parquet_from_s3_to_s3_with_bad_records(ray_cluster, s3_env, capsys):
    bucket = s3_env.make_bucket("mine-wds")
    expected = put_shards(s3_env, bucket, "in", shards=2, per_shard=3, bad_shard=1)  # 00000.tar, 00001.tar
    expected.update(put_shards(s3_env, bucket, "in", shards=1, fmt="parquet", per_shard=3, bad_shard=2, start=2))
    assert main(["mine", "--input", f"s3://{bucket}/in", "--output", f"s3://{bucket}/out", *FAST]) == 0
    text = capsys.readouterr()
    rows, rejects, stats, summary = read_output(f"s3://{bucket}/out")

    # the documented schema, read back by pandas
    assert list(rows.columns) == ROW_COLUMNS
    assert rows["token_ids"].map(len).between(1, 4).all() and rows["cosine"].dtype == "float32"
    assert (rows["steps"] == 3).all() and (rows["model"] == "tiny").all() and (rows["seconds"] > 0).all()
    assert list(rejects.columns) == ["key", "shard", "reason"]
    # every record exactly once: 9 good rows, 3 rejects in tar 00001 and 3 in Parquet 00002
    assert sorted(rows["key"]) == sorted(k for k in expected if not k.endswith(("9997", "9998", "9999")))
    assert rows["key"].is_unique and (rows["caption"] == rows["key"].map(expected)).all()
    reasons = dict(zip(rejects["key"], rejects["reason"]))
    assert reasons["000019997"].startswith("corrupt or truncated image")
    assert reasons["000019998"] == "not an image (unrecognised format)"
    assert reasons["000019999"] == "no image member (has: txt)"
    assert reasons["000029997"].startswith("corrupt or truncated image")
    assert reasons["000029999"] == "no image bytes (status: failed_to_download)"  # img2dataset's failed download
    assert sorted(rejects["shard"]) == ["00001"] * 3 + ["00002"] * 3
    # markers per shard with balanced counts, and the summary says so
    assert sorted(stats) == ["00000_stats.json", "00001_stats.json", "00002_stats.json"]
    assert stats["00001_stats.json"]["records"] == 6 and stats["00001_stats.json"]["rejects"] == 3
    assert stats["00002_stats.json"]["format"] == "parquet" and stats["00002_stats.json"]["rows"] == 3
    assert summary["complete"] and summary["totals"] == {"records": 15, "rows": 9, "rejects": 6, "balanced": True}
    # 3 good images per shard in 4 slots for 3 steps: occupancy 9 / 12 (the stats markers' counts, summed)
    assert summary["processor"] == {"slot_steps": 27, "slot_capacity": 36, "batch_occupancy": 0.75}
    assert "occupancy 75.0%" in text.out + text.err
    assert summary["shards"]["processed_this_run"] == 3 and summary["storage"]["credentials"] == "forwarded"
    assert "15 in = 9 rows + 6 rejects" in text.out and "3/3 shards" in text.err
    # secrets never written or printed
    blob = json.dumps([summary, stats]) + text.out + text.err
    assert s3_env.secret_key not in blob and s3_env.access_key not in blob

    # a finished job run again does nothing and says so; no object is rewritten
    client = s3_env.client()
    before = {o["Key"]: o["ETag"] + str(o["LastModified"])
              for o in client.list_objects_v2(Bucket=bucket, Prefix="out/rows/")["Contents"]}
    assert main(["mine", "--input", f"s3://{bucket}/in", "--output", f"s3://{bucket}/out", *FAST]) == 0
    again = capsys.readouterr().out
    assert "3 already done, 0 to do" in again and "nothing to do" in again
    after = {o["Key"]: o["ETag"] + str(o["LastModified"])
             for o in client.list_objects_v2(Bucket=bucket, Prefix="out/rows/")["Contents"]}
    assert after == before
    assert read_output(f"s3://{bucket}/out")[3]["status"].startswith("nothing to do")

    # the same output with other settings is refused instead of mixing prompts
    assert main(["mine", "--input", f"s3://{bucket}/in", "--output", f"s3://{bucket}/out",
                 *FAST[:-6], "--steps", "5", "--prompt-len", "4"]) == 2
    assert "settings.steps: 3 there vs 5 now" in capsys.readouterr().err


def test_folder_of_images_local_and_key_seeds_independent_of_batching(ray_cluster, tmp_path):
    from pipelines.io.samples import write_sample_images

    write_sample_images(tmp_path / "imgs", 3, size=48)
    write_sample_images(tmp_path / "imgs" / "more", 2, seed=10, size=48)
    (tmp_path / "imgs" / "sample_001.txt").write_text("a caption beside its image")
    (tmp_path / "imgs" / "more" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    outs = {}
    for batch in ("1", "4"):
        out = tmp_path / f"out{batch}"
        assert main(["mine", "--input", str(tmp_path / "imgs"), "--output", str(out),
                     *FAST[:-4], "--batch-size", batch, "--actors", "1"]) == 0
        rows = pd.read_parquet(out / "rows")
        outs[batch] = rows.set_index("key")
    rows = outs["1"]
    assert sorted(rows.index) == ["imgs/sample_000", "imgs/sample_001", "imgs/sample_002",
                                  "more/sample_000", "more/sample_001"]
    assert rows.loc["imgs/sample_001", "caption"] == "a caption beside its image"
    rejects = pd.read_parquet(tmp_path / "out1" / "rejects")
    assert list(rejects["key"]) == ["more/broken"] and rejects["reason"][0].startswith("corrupt or truncated")
    # a row's prompt depends on its key only, not on which images shared its batch
    assert (outs["4"].loc[rows.index, "prompt"] == rows["prompt"]).all()


def test_missing_input_is_a_one_line_error(ray_cluster, tmp_path, capsys):
    assert main(["mine", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "out"), *FAST]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "no such file or folder" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flags, message", [
    (["--actors", "0"], "actors must be >= 1"),
    (["--steps", "0"], "steps must be >= 1"),
])
def test_bad_flags_are_user_errors(tmp_path, capsys, flags, message):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.tar").write_bytes(webdataset_bytes(sample_records(0, 1, size=32)))
    assert main(["mine", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"), *FAST, *flags]) == 2
    assert message in capsys.readouterr().err


def test_unreadable_shard_fails_alone_and_a_rerun_retries_it(ray_cluster, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    for s in range(2):
        (tmp_path / "in" / f"{s:05d}.tar").write_bytes(webdataset_bytes(sample_records(s, 2, size=32)))
    (tmp_path / "in" / "00002.tar").write_bytes(b"this is not a tar archive at all" * 40)
    (tmp_path / "in" / "00003.parquet").write_bytes(b"PAR1 garbage")
    args = ["mine", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), *FAST]
    assert main(args) == 1  # incomplete: exit status 1
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["shards"] == {"total": 4, "done": 2, "failed": 2, "processed_this_run": 2, "skipped_already_done": 0}
    assert sorted(f["shard"] for f in summary["failed_shards"]) == ["00002", "00003"]
    assert "not a readable tar" in printed and "not a readable Parquet file" in printed
    assert not (tmp_path / "out" / "stats" / "00002_stats.json").exists()

    # the shards are repaired; the same command finishes exactly those two
    (tmp_path / "in" / "00002.tar").write_bytes(webdataset_bytes(sample_records(2, 2, size=32)))
    (tmp_path / "in" / "00003.parquet").write_bytes(parquet_bytes(sample_records(3, 2, size=32)))
    assert main(args) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["shards"]["processed_this_run"] == 2 and summary["shards"]["skipped_already_done"] == 2
    rows = pd.read_parquet(tmp_path / "out" / "rows")
    assert sorted(rows["key"]) == sorted(f"{s:05d}{i:04d}" for s in range(4) for i in range(2))


def test_one_shard_file_as_input(ray_cluster, tmp_path):
    shard = tmp_path / "only.tar"
    shard.write_bytes(webdataset_bytes(sample_records(7, 2, size=32)))
    assert main(["mine", "--input", str(shard), "--output", str(tmp_path / "out"), *FAST]) == 0
    rows = pd.read_parquet(tmp_path / "out" / "rows" / "only.parquet")
    assert sorted(rows["key"]) == ["000070000", "000070001"] and set(rows["shard"]) == {"only"}
