"""A local job read while it runs, SIGKILLed mid-way, then rerun: pandas, pyarrow datasets and DuckDB
read rows/ and rejects/ at every moment, and after the rerun every key appears exactly once."""

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pyarrow.dataset as pads

from pipelines.cli import main
from pipelines.io.samples import sample_records, webdataset_bytes
from tests.test_mine_resume import _descendants

SHARDS = 8
ARGS = ["--steps", "25", "--prompt-len", "4", "--batch-size", "4"]


def _read_all(out) -> int:
    """Rows as each reader sees them (raises if one cannot read a folder)."""
    counts = set()
    for kind in ("rows", "rejects"):
        if not list((out / kind).rglob("*.parquet")) if (out / kind).exists() else True:
            continue  # no file yet (an empty folder is not what this test is about)
        counts.add(("pandas", kind, len(pd.read_parquet(out / kind))))
        counts.add(("pyarrow", kind, pads.dataset(str(out / kind)).count_rows()))
        try:
            import duckdb
        except ImportError:
            continue
        duckdb.sql(f"select count(*) from read_parquet('{out / kind}/**/*.parquet')").fetchall()
    return len(counts)


def test_local_job_read_while_running_killed_and_rerun(ray_cluster, tmp_path):
    (tmp_path / "in").mkdir()
    expected = []
    for s in range(SHARDS):
        records = sample_records(s, 3, bad=(s == 2), size=32)
        (tmp_path / "in" / f"{s:05d}.tar").write_bytes(webdataset_bytes(records))
        expected += [r["key"] for r in records]
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipelines.cli", "mine", "--input", str(tmp_path / "in"), "--output", str(out), *ARGS]
    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    reads, ray_processes = 0, {}
    try:
        deadline = time.monotonic() + 300
        while len(list((out / "stats").glob("*.json")) if (out / "stats").exists() else []) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
            _read_all(out)  # readers during the run: never an error
            reads += 1
            time.sleep(0.05)
        ray_processes = _descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        for pid in [proc.pid, *ray_processes]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
    done_before = len(list((out / "stats").glob("*.json")))
    assert 3 <= done_before < SHARDS and reads > 0
    _read_all(out)  # and right after the kill

    assert main(["mine", "--input", str(tmp_path / "in"), "--output", str(out), *ARGS]) == 0
    rows, rejects = pd.read_parquet(out / "rows"), pd.read_parquet(out / "rejects")
    assert rows["key"].is_unique and rejects["key"].is_unique
    assert sorted(rows["key"].tolist() + rejects["key"].tolist()) == sorted(expected)
    assert not list((out / "_tmp").glob("*")) if (out / "_tmp").exists() else True
    assert not (out / "_lease.json").exists()  # the dead driver's lease was taken over, then released
