"""A job output is readable at every moment: a write SIGKILLed mid-way leaves nothing where readers
look, and every reader of an output (report, eval metrics, a job output used as input) reads only the
shards that have a done marker. No Ray: the writes are the ones a shard worker makes."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipelines.io.storage import Location
from pipelines.jobs.markers import clean_tmp, marker_file, read_done, rejects_file, rows_file

# a child process writes shard 00001's rows file the way a shard worker does, and is SIGKILLed
# after the first half of the bytes reached the disk (open() wrapped to stop there)
_WRITER = textwrap.dedent("""
    import sys, time
    import pipelines.io.storage as storage
    from pipelines.io.storage import Location
    from pipelines.jobs.markers import rows_file, tmp_dir

    class Half:
        def __init__(self, f): self.f = f
        def __enter__(self): return self
        def __exit__(self, *a): self.f.close()
        def write(self, data):
            self.f.write(data[: len(data) // 2]); self.f.flush()
            print("HALF", flush=True)
            time.sleep(600)

    storage.open = lambda path, mode: Half(open(path, mode))
    out = Location(sys.argv[1])
    rows_file(out, "00001").write_bytes(open(sys.argv[2], "rb").read(), tmp_dir(out))
""")


def _shard_table(shard: str, n: int) -> pa.Table:
    return pa.table({"key": [f"{shard}-{i}" for i in range(n)], "shard": [shard] * n, "prompt": ["p"] * n})


def _done_shard(out: Location, shard: str, n: int) -> None:
    for f, table in ((rows_file(out, shard), _shard_table(shard, n)),
                     (rejects_file(out, shard), pa.table({"key": pa.array([], pa.string())}))):
        os.makedirs(os.path.dirname(f.path), exist_ok=True)
        pq.write_table(table, f.path)
    marker_file(out, shard).write_text(json.dumps({"shard": shard, "records": n, "rows": n, "rejects": 0}))


def _readers(folder) -> dict:
    """Row count of ``folder`` as each reader people use sees it (raises if one cannot read it)."""
    counts = {"pandas": len(pd.read_parquet(folder)), "pyarrow.dataset": pads.dataset(str(folder)).count_rows()}
    try:
        import duckdb
    except ImportError:
        return counts
    counts["duckdb"] = duckdb.sql(f"select count(*) from read_parquet('{folder}/**/*.parquet')").fetchall()[0][0]
    return counts


def test_a_write_killed_mid_way_leaves_rows_readable(tmp_path):
    out = Location(str(tmp_path / "out"))
    _done_shard(out, "00000", 3)
    big = tmp_path / "big.parquet"
    pq.write_table(pa.table({"key": [f"k{i}" for i in range(200_000)], "prompt": ["x" * 40] * 200_000}), big)
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, out.uri, str(big)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")})
    try:
        assert proc.stdout.readline().strip() == "HALF"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    # every reader reads rows/ and rejects/ as if the killed write had never started
    assert set(_readers(tmp_path / "out" / "rows").values()) == {3}
    assert set(_readers(tmp_path / "out" / "rejects").values()) == {0}
    assert sorted(p.name for p in (tmp_path / "out" / "rows").iterdir()) == ["00000.parquet"]
    leftovers = [p for p in tmp_path.joinpath("out").rglob("*") if p.is_file()]
    assert any(p.parent.name == "_tmp" for p in leftovers), "the killed write must have left its temporary file"
    # the next run cleans the leftovers (it holds the output's lease when it does)
    assert clean_tmp(out) == 1 and not list((tmp_path / "out" / "_tmp").iterdir())


def test_readers_of_an_output_read_only_done_shards(tmp_path):
    from pipelines.evaluate.report import load_rows
    from pipelines.io.prompt_tables import find_tables

    out = Location(str(tmp_path / "out"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "_job.json").write_text(json.dumps({"job": "mine"}))
    _done_shard(out, "00000", 3)
    _done_shard(out, "00001", 2)
    marker_file(out, "00001").delete()  # written, then killed before its marker: not done
    assert read_done(out).num_rows == 3
    kind, df, total, _, _ = load_rows(out, limit=10, sort="key")
    assert kind == "mine" and total == 3 and set(df["shard"]) == {"00000"}
    assert [s.id for s in find_tables(out, "parquet")] == ["00000"]  # a job output as a later job's input
    assert read_done(Location(str(tmp_path / "empty"))) is None
    with pytest.raises(ValueError, match="kind must be rows or rejects"):
        read_done(out, "stats")
