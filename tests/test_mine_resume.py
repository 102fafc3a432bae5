"""Resume: an actor killed mid-job, then the driver SIGKILLed mid-job; the same command run again
finishes only the missing shards, and every key appears exactly once."""

import os
import signal
import subprocess
import sys
import time

import pandas as pd

from pipelines.cli import main
from pipelines.io.storage import StorageOptions
from tests.test_mine import put_shards, read_output

SHARDS = 10
ARGS = ["--steps", "25", "--prompt-len", "4", "--batch-size", "4", "--actors", "1"]


def _markers(client, bucket, prefix) -> list[str]:
    listing = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/stats/")
    return sorted(o["Key"] for o in listing.get("Contents", []))


def _wait(predicate, proc, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"driver exited ({proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}")
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _descendants(root: int) -> dict[int, str]:
    """pid -> command line of every process below ``root`` (Ray workers start their own sessions,
    so a process group does not find them)."""
    out = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True).stdout
    table = [(int(p), int(pp), " ".join(rest)) for p, pp, *rest in (line.split() for line in out.splitlines())]
    found, frontier = {}, {root}
    while frontier:
        frontier = {p for p, pp, _ in table if pp in frontier and p not in found}
        found.update({p: a for p, pp, a in table if p in frontier})
    return found


def _actors(driver: int) -> list[int]:
    return [p for p, args in _descendants(driver).items() if args.startswith("ray::MapWorker")]


def test_killed_actor_then_killed_driver_then_rerun_loses_and_duplicates_nothing(ray_cluster, s3_env, tmp_path):
    bucket = s3_env.make_bucket("mine-resume")
    expected = put_shards(s3_env, bucket, "in", shards=SHARDS, per_shard=4, bad_shard=3)
    client = s3_env.client()
    cmd = [sys.executable, "-m", "pipelines.cli", "mine", "--input", f"s3://{bucket}/in",
           "--output", f"s3://{bucket}/out", *ARGS]
    # its own session: the driver's local Ray lives in the driver's process group, cleaned up below
    proc = subprocess.Popen(cmd, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    ray_processes = {}
    try:
        _wait(lambda: _markers(client, bucket, "out"), proc, 120, "the first shard")
        [actor] = _actors(proc.pid)
        os.kill(actor, signal.SIGKILL)  # lose the actor: Ray restarts it and retries its shard
        n = len(_markers(client, bucket, "out"))
        _wait(lambda: len(_markers(client, bucket, "out")) >= n + 2, proc, 120, "shards after the actor loss")
        assert _actors(proc.pid) not in ([], [actor])  # a new actor did them
        ray_processes = _descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)  # the driver dies at an arbitrary moment
        proc.wait(timeout=10)
    finally:
        for pid in [proc.pid, *ray_processes]:  # the dead driver's local Ray: only what this test started
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
    done_before = len(_markers(client, bucket, "out"))
    assert 2 < done_before < SHARDS, "the driver must die mid-job for this test to mean anything"

    # a killed run may leave a data file without its marker: put a bogus one there (duplicating keys
    # of a finished shard); the rerun must replace it, not keep or append to it
    pending = sorted(set(f"out/stats/{s:05d}_stats.json" for s in range(SHARDS)) - set(_markers(client, bucket, "out")))
    victim = pending[-1].split("/")[-1].removesuffix("_stats.json")
    opts = StorageOptions.from_env()
    bogus = pd.read_parquet(opts.resolve(f"s3://{bucket}/out/rows/00000.parquet").path, filesystem=opts.resolve(
        f"s3://{bucket}").fs)
    client.put_object(Bucket=bucket, Key=f"out/rows/{victim}.parquet", Body=bogus.to_parquet())

    # the same command again (in-process, on the test's Ray)
    assert main(["mine", "--input", f"s3://{bucket}/in", "--output", f"s3://{bucket}/out", *ARGS]) == 0
    rows, rejects, stats, summary = read_output(f"s3://{bucket}/out")
    assert summary["shards"]["skipped_already_done"] == done_before
    assert summary["shards"]["processed_this_run"] == SHARDS - done_before
    assert len(stats) == SHARDS and summary["complete"]
    assert rows["key"].is_unique and rejects["key"].is_unique
    assert sorted(rows["key"].tolist() + rejects["key"].tolist()) == sorted(expected)
    assert len(rejects) == 3 and set(rejects["shard"]) == {"00003"}
    assert summary["totals"] == {"records": len(expected), "rows": len(expected) - 3, "rejects": 3, "balanced": True}
