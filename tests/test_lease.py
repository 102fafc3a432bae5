"""One driver per output: the lease (local folders and a real S3 server), and two real `promptmine mine`
drivers started at once on one output: one refuses, every shard is written once, by the other."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from pipelines.io.samples import sample_records, webdataset_bytes
from pipelines.io.storage import Location, StorageOptions
from pipelines.jobs.lease import LEASE_NAME, Lease, LeaseHeld, lease_owner


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _plant(loc: Location, **record) -> None:
    now = time.time()
    base = {"host": socket.gethostname(), "pid": os.getpid(), "run_id": "other", "expires_at": now + 600,
            "expires": "later"}
    loc.child(LEASE_NAME).write_text(json.dumps({**base, **record}))


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path):
    if request.param == "local":
        return Location(str(tmp_path / "out"))
    s3 = request.getfixturevalue("s3_env")
    bucket = s3.make_bucket(f"lease-{len(os.listdir(tmp_path))}-{os.getpid()}-{time.time_ns() % 10**6}")
    return StorageOptions.from_env().resolve(f"s3://{bucket}/out")


def test_second_lease_refused_then_released_then_taken(output):
    first = Lease(output, ttl=30).acquire()
    assert lease_owner(output) == first.run_id
    with pytest.raises(LeaseHeld, match=rf"another driver \(host {socket.gethostname()}, pid {os.getpid()}, "
                                        rf"run {first.run_id}, until "):
        Lease(output, ttl=30).acquire()
    first.release()
    assert lease_owner(output) is None
    with Lease(output, ttl=30).acquire() as second:
        assert lease_owner(output) == second.run_id


def test_dead_owners_are_taken_over(output):
    _plant(output, pid=_dead_pid())  # this host, a process that is gone: at once
    with Lease(output, ttl=30).acquire() as lease:
        assert lease_owner(output) == lease.run_id
    _plant(output, host="elsewhere", pid=1, expires_at=time.time() - 1)  # another host, expired
    with Lease(output, ttl=30).acquire() as lease:
        assert lease_owner(output) == lease.run_id
    _plant(output, host="elsewhere", pid=1)  # another host, live: refused
    with pytest.raises(LeaseHeld, match="host elsewhere, pid 1, run other"):
        Lease(output, ttl=30).acquire()


def test_waiting_driver_gets_the_lease_when_the_first_ends_and_heartbeat_renews(tmp_path):
    out = Location(str(tmp_path / "out"))
    first = Lease(out, ttl=1.5).acquire()
    time.sleep(4)  # well past its TTL: only the heartbeat (every 0.5 s) keeps it
    with pytest.raises(LeaseHeld):
        Lease(out, ttl=1.5).acquire()
    threading.Timer(1.0, first.release).start()
    start = time.monotonic()
    with Lease(out, ttl=1.5).acquire(wait=20, poll=0.1) as second:
        assert lease_owner(out) == second.run_id and 0.8 < time.monotonic() - start < 10


def _shards(folder, n):
    folder.mkdir()
    for s in range(n):
        (folder / f"{s:05d}.tar").write_bytes(webdataset_bytes(sample_records(s, 2, size=32)))


def test_two_drivers_started_at_once_one_refuses_no_shard_written_twice(tmp_path):
    _shards(tmp_path / "in", 4)
    cmd = [sys.executable, "-m", "pipelines.cli", "mine", "--input", str(tmp_path / "in"), "--output",
           str(tmp_path / "out"), "--steps", "3", "--prompt-len", "4", "--batch-size", "4"]
    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=400), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 2], results
    _, out, err = next(r for r in results if r[0] == 2)
    last = err.strip().splitlines()[-1]  # the refusal is one line (after the tiny preset's warning)
    assert last.startswith("promptmine mine: error: ") and "is being written by another driver (host " in last
    assert "--wait-lease" in last and "Traceback" not in err and "to do" not in out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    markers = [json.loads(p.read_text()) for p in sorted((tmp_path / "out" / "stats").iterdir())]
    assert len(markers) == 4 and {m["run_id"] for m in markers} == {summary["run_id"]}
    assert summary["shards"]["processed_this_run"] == 4 and not (tmp_path / "out" / LEASE_NAME).exists()
