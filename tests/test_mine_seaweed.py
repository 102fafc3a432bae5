"""The end-to-end job against SeaweedFS, a production S3 store that checks credentials (moto does not)."""

from pipelines.cli import main
from tests.test_mine import ROW_COLUMNS, put_shards, read_output


def test_mine_end_to_end_on_seaweedfs(ray_cluster, seaweed_env, capsys):
    bucket = seaweed_env.make_bucket("mine-seaweed")
    expected = put_shards(seaweed_env, bucket, "in", shards=2, per_shard=3, bad_shard=0)
    args = ["mine", "--input", f"s3://{bucket}/in", "--output", f"s3://{bucket}/out/prompts",
            "--steps", "3", "--prompt-len", "4", "--batch-size", "8"]
    assert main(args) == 0
    printed = capsys.readouterr()
    rows, rejects, stats, summary = read_output(f"s3://{bucket}/out/prompts")
    assert list(rows.columns) == ROW_COLUMNS
    assert sorted(rows["key"].tolist() + rejects["key"].tolist()) == sorted(expected)
    assert len(rejects) == 3 and rows["prompt"].str.len().gt(0).all()
    assert summary["complete"] and summary["totals"]["balanced"]
    assert summary["storage"]["endpoint_url"] == seaweed_env.endpoint_url

    # no object the job wrote, and nothing it printed, holds a credential
    client = seaweed_env.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"]]
    assert len(keys) == 1 + 3 * 2 + 1  # _job.json, rows/rejects/stats per shard, summary.json
    for key in keys:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert seaweed_env.secret_key.encode() not in body and seaweed_env.access_key.encode() not in body
    assert seaweed_env.secret_key not in printed.out + printed.err

    assert main(args) == 0  # finished: the rerun does nothing
    assert "nothing to do" in capsys.readouterr().out
