"""A poison shard (its processor kills the actor process every time) is retried a bounded number of
times, then recorded as failed with the reason; the other shards finish and the job exits 1."""

import json
import os

import pyarrow as pa

from pipelines.io.samples import sample_records, webdataset_bytes
from pipelines.io.storage import StorageOptions
from pipelines.jobs.shard_job import ShardJob, ShardJobConfig, run_shard_job


def _schema():
    return pa.schema([("key", pa.string()), ("shard", pa.string())])


class KillOnShard:
    """Counts its attempts at ``poison`` in a file, then dies the way a native crash does."""

    def __init__(self, poison: str, attempts_file: str):
        self.poison, self.attempts_file = poison, attempts_file

    def __call__(self, shard_id, records):
        if shard_id == self.poison:
            with open(self.attempts_file, "a") as f:
                f.write("attempt\n")
            os._exit(1)
        return [{"key": r["key"], "shard": shard_id} for r in records], []


def test_poison_shard_is_retried_then_failed_and_the_rest_finishes(ray_cluster, tmp_path):
    (tmp_path / "in").mkdir()
    for s in range(4):
        (tmp_path / "in" / f"{s:05d}.tar").write_bytes(webdataset_bytes(sample_records(s, 2, size=32)))
    attempts = tmp_path / "attempts.txt"
    job = ShardJob(name="poison", processor=KillOnShard,
                   processor_kwargs={"poison": "00001", "attempts_file": str(attempts)},
                   row_schema=_schema, settings={})
    cfg = ShardJobConfig(input_uri=str(tmp_path / "in"), output_uri=str(tmp_path / "out"), max_shard_retries=1)
    printed = []
    summary = run_shard_job(job, cfg, StorageOptions(), echo=printed.append)

    assert attempts.read_text().count("attempt") == 2  # the first try and one retry, then no more
    assert not summary["complete"] and summary["shards"]["done"] == 3 and summary["shards"]["failed"] == 1
    [failure] = summary["failed_shards"]
    assert failure["shard"] == "00001" and "died on each of its 2 attempts" in failure["error"]
    assert sorted(p.name for p in (tmp_path / "out" / "stats").iterdir()) == [
        "00000_stats.json", "00002_stats.json", "00003_stats.json"]
    record = json.loads((tmp_path / "out" / "failed" / "00001.json").read_text())
    assert record["error"] == failure["error"] and record["run_id"] == summary["run_id"]
    assert "FAILED    00001: lost: the process working on it died" in printed[-1]
