"""`promptmine rewrite` end to end: a real local Ray, tiny BLOOM models saved to disk, local and S3 (moto) storage.

Each test runs the real console entry point (pipelines.cli.main) in-process on the session Ray; the
resume test also runs it as a driver subprocess with its own local Ray and SIGKILLs it mid-job.
"""

import gzip
import io
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from pipelines.cli import main
from pipelines.io.storage import StorageOptions

ROW_COLUMNS = ["key", "shard", "raw_prompt", "prompt", "prompt_tokens", "new_tokens", "model", "template", "mode",
               "max_new_tokens", "generation", "seconds"]
DTYPES = {"prompt_tokens": "int32", "new_tokens": "int32", "max_new_tokens": "int32", "seconds": "float32"}
FAST = ["--max-new-tokens", "6", "--batch-size", "4", "--actors", "1"]


@pytest.fixture(scope="module")
def varied_lm_dir(tmp_path_factory):
    """A tiny BLOOM whose greedy text depends on the prompt (larger random weights than tiny_lm_dir)."""
    from pez_core.rewrite.tiny import build_tiny_lm

    return build_tiny_lm(tmp_path_factory.mktemp("varied_bloom"), arch="bloom", seed=0, init_std=0.5)


def read_output(uri):
    """rows, rejects (pandas, straight from storage), stats markers and summary of an output."""
    out = StorageOptions.from_env().resolve(uri)
    rows = pd.read_parquet(out.child("rows").path, filesystem=out.fs)
    rejects = pd.read_parquet(out.child("rejects").path, filesystem=out.fs)
    stats = {loc.relative_to(out.child("stats")): json.loads(loc.read_text()) for loc, _ in
             out.child("stats").list_files()}
    return rows, rejects, stats, json.loads(out.child("summary.json").read_text())


def write_mixed_tables(folder):
    """Parquet, CSV and JSON Lines tables with good and bad rows; returns {key: expected reason or None}."""
    folder.mkdir(parents=True)
    pd.DataFrame({"id": ["p0", "p1", "p2", "p3", "p4", "p5", None],
                  "prompt": ["a cat in the rain", "a castle at sunset", "", None, "x" * 1200, "a fox by the river",
                             "a tiger at night"]}).to_parquet(folder / "a.parquet")
    (folder / "b.csv").write_text('id,prompt\nc0,a dragon in winter\nc1,"a girl, portrait"\nc2,too,many,fields\n'
                                  'c3,"   "\nc1,a duplicate key\n')
    (folder / "c.jsonl").write_text('{"id": "j0", "prompt": "a lighthouse at night"}\n{broken json\n'
                                    '{"id": "j2", "prompt": 42}\n\n{"id": "j3", "text": "no prompt field"}\n'
                                    '{"id": "j4", "prompt": "a samurai"}\n{"id": "j5", "prompt": "bad \\ud800"}\n')
    (folder / "_SUCCESS").write_text("")  # not a table
    (folder / "notes.txt").write_text("not a table either")
    return {"p0": None, "p1": None, "p5": None, "c0": None, "c1": None, "j0": None, "j4": None,
            "p2": "empty prompt", "p3": "prompt is null",
            "p4": "prompt has 1200 characters, more than the maximum 1000",
            "a:6": "key column 'id' is null",
            "b:2": "unreadable row (CSV line 4 has 4 fields, the header 2)",
            "c3": "prompt is only whitespace",
            "b:4": "duplicate key 'c1' in this shard (first at row 1)",
            "c:1": "unreadable row (line 2 is not valid JSON",
            "j2": "not a string but int",
            "c:3": "unreadable row (line 5 has no 'prompt' field)",
            "c:5": "unreadable row (line 7 holds a lone surrogate, not valid Unicode)"}


def test_local_tables_bad_rows_rejected_rest_rewritten_rerun_does_nothing(ray_cluster, varied_lm_dir, tmp_path,
                                                                         capsys):
    from pez_core.rewrite.rewriter import Rewriter

    expected = write_mixed_tables(tmp_path / "in")
    out = tmp_path / "out"
    args = ["rewrite", "--input", str(tmp_path / "in"), "--output", str(out), "--model", str(varied_lm_dir),
            "--key-column", "id", *FAST]
    assert main(args) == 0
    printed = capsys.readouterr()
    rows, rejects, stats, summary = read_output(str(out))

    # the documented schema, read back by pandas
    assert list(rows.columns) == ROW_COLUMNS and list(rejects.columns) == ["key", "shard", "reason"]
    assert {c: str(rows[c].dtype) for c in DTYPES} == DTYPES
    assert (rows["model"] == str(varied_lm_dir)).all() and (rows["template"] == "v1").all()
    assert (rows["mode"] == "greedy").all() and (rows["max_new_tokens"] == 6).all() and (rows["seconds"] > 0).all()
    assert json.loads(rows["generation"][0])["max_new_tokens"] == 6
    assert rows["new_tokens"].between(1, 6).all() and (rows["prompt_tokens"] > 10).all()

    # rows in = rows out + rows rejected; every key exactly once, each reject with its reason
    assert rows["key"].is_unique and rejects["key"].is_unique
    assert sorted(rows["key"].tolist() + rejects["key"].tolist()) == sorted(expected)
    assert sorted(rows["key"]) == sorted(k for k, why in expected.items() if why is None)
    reasons = dict(zip(rejects["key"], rejects["reason"]))
    for key, why in expected.items():
        if why is not None:
            assert reasons[key].startswith(why), (key, reasons[key])
    assert dict(zip(rows["key"], rows["shard"]))["c0"] == "b"
    assert dict(zip(rejects["key"], rejects["shard"]))["c:1"] == "c"
    assert summary["complete"] and summary["totals"] == {"records": 18, "rows": 7, "rejects": 11, "balanced": True}
    assert sorted(stats) == ["a_stats.json", "b_stats.json", "c_stats.json"]
    assert (stats["c_stats.json"]["records"], stats["c_stats.json"]["rejects"]) == (6, 4)
    assert "18 in = 7 rows + 11 rejects" in printed.out and "3/3 shards" in printed.err

    # each row carries the rewrite of its own prompt: the same text as the Rewriter called directly
    rw = Rewriter.from_pretrained(str(varied_lm_dir))
    direct = rw.rewrite(rows["raw_prompt"].tolist(), max_new_tokens=6)
    assert rows["prompt"].tolist() == direct and rows["prompt"].nunique() > 1
    assert dict(zip(rows["key"], rows["raw_prompt"]))["c1"] == "a girl, portrait"

    # a finished job run again does nothing, says so, and rewrites no data file
    before = {p: p.stat().st_mtime_ns for p in (out / "rows").iterdir()}
    assert main(args) == 0
    again = capsys.readouterr().out
    assert "3 already done, 0 to do" in again and "nothing to do" in again
    assert {p: p.stat().st_mtime_ns for p in (out / "rows").iterdir()} == before
    assert json.loads((out / "summary.json").read_text())["status"].startswith("nothing to do")

    # the same output with other generation settings is refused instead of mixing rewrites
    assert main([*args[:-6], "--max-new-tokens", "9", *FAST[2:]]) == 2
    assert "settings.max_new_tokens: 6 there vs 9 now" in capsys.readouterr().err


def test_s3_input_and_output_default_keys_unusable_table_fails_alone(ray_cluster, tiny_lm_dir, s3_env, capsys):
    bucket = s3_env.make_bucket("rewrite-s3")
    client = s3_env.client()
    table = io.BytesIO()
    pd.DataFrame({"prompt": ["a cat", "a dog in space", " ", "a city at night"],
                  "seed": [1, 2, 3, 4]}).to_parquet(table)
    client.put_object(Bucket=bucket, Key="tables/part-0.parquet", Body=table.getvalue())
    lines = '{"prompt": "a knight"}\n{"prompt": ["not", "a", "string"]}\n{"prompt": "a cottage by the river"}\n'
    client.put_object(Bucket=bucket, Key="tables/sub/part-1.jsonl.gz", Body=gzip.compress(lines.encode()))
    client.put_object(Bucket=bucket, Key="tables/zz.csv", Body=b"caption\na cat\n")  # no prompt column

    assert main(["rewrite", "--input", f"s3://{bucket}/tables", "--output", f"s3://{bucket}/out",
                 "--model", str(tiny_lm_dir), "--template", "v2", *FAST]) == 1  # incomplete: one shard failed
    printed = capsys.readouterr()
    # the table without a prompt column fails alone (no marker: a rerun retries it); the others are done
    assert f"FAILED    zz: s3://{bucket}/tables/zz.csv: no prompt column 'prompt' (columns: caption)" in printed.out
    rows, rejects, stats, summary = read_output(f"s3://{bucket}/out")
    assert list(rows.columns) == ROW_COLUMNS
    assert sorted(rows["key"]) == ["part-0:0", "part-0:1", "part-0:3", "sub/part-1:0", "sub/part-1:2"]
    assert dict(zip(rows["key"], rows["raw_prompt"]))["sub/part-1:2"] == "a cottage by the river"
    assert (rows["template"] == "v2").all()
    assert dict(zip(rejects["key"], rejects["reason"])) == {"part-0:2": "prompt is only whitespace",
                                                             "sub/part-1:1": "not a string but list"}
    assert sorted(stats) == ["part-0_stats.json", "sub/part-1_stats.json"]
    assert summary["totals"] == {"records": 7, "rows": 5, "rejects": 2, "balanced": True}
    assert summary["shards"] == {"total": 3, "done": 2, "failed": 1, "processed_this_run": 2,
                                 "skipped_already_done": 0}
    assert summary["storage"]["credentials"] == "forwarded"
    blob = json.dumps([summary, stats]) + printed.out + printed.err
    assert s3_env.secret_key not in blob and s3_env.access_key not in blob


def test_one_big_parquet_file_split_by_row_groups_on_s3(ray_cluster, tiny_lm_dir, s3_env):
    import pyarrow as pa
    import pyarrow.parquet as pq

    bucket = s3_env.make_bucket("rewrite-split")
    prompts = [f"a cat number {i}" for i in range(10)]
    prompts[7] = ""
    table = io.BytesIO()
    pq.write_table(pa.table({"image_name": [f"{i}.png" for i in range(10)], "prompt": prompts}), table,
                   row_group_size=3)  # row groups of 3, 3, 3, 1 rows
    s3_env.client().put_object(Bucket=bucket, Key="meta/metadata.parquet", Body=table.getvalue())
    args = ["rewrite", "--input", f"s3://{bucket}/meta/metadata.parquet", "--output", f"s3://{bucket}/out",
              "--model", str(tiny_lm_dir), "--rows-per-shard", "5", *FAST]
    assert main([*args, "--key-column", "image_name"]) == 0
    rows, rejects, stats, summary = read_output(f"s3://{bucket}/out")
    # two shards of whole row groups (3 + 3 rows, then 3 + 1), named after the file
    assert sorted(stats) == ["metadata@00000_stats.json", "metadata@00001_stats.json"]
    assert (stats["metadata@00000_stats.json"]["records"], stats["metadata@00001_stats.json"]["records"]) == (6, 4)
    assert dict(zip(rows["key"], rows["shard"]))["9.png"] == "metadata@00001"
    assert sorted(rows["key"]) == sorted(f"{i}.png" for i in range(10) if i != 7)
    assert dict(zip(rows["key"], rows["raw_prompt"]))["6.png"] == "a cat number 6"
    assert rejects.to_dict("records") == [{"key": "7.png", "shard": "metadata@00001", "reason": "empty prompt"}]
    assert summary["totals"] == {"records": 10, "rows": 9, "rejects": 1, "balanced": True}


@pytest.mark.parametrize("extra, message", [
    (["--output", "{in}/out"], "is inside --input"),
    (["--model", "{tmp}"], "no config.json there"),
    (["--model", "someone/not-cached-model"], "not in the local Hugging Face cache and HF_HUB_OFFLINE is set"),
    (["--mode", "beam", "--num-beams", "1"], "num_beams must be an integer >= 2"),
    (["--max-new-tokens", "0"], "max_new_tokens must be a positive integer"),
    (["--format", "csv"], "no Parquet, CSV or JSON Lines files found (format csv)"),
])
def test_bad_flags_are_one_line_user_errors_before_ray_starts(tiny_lm_dir, tmp_path, capsys, extra, message):
    (tmp_path / "in").mkdir()
    pd.DataFrame({"prompt": ["a cat"]}).to_parquet(tmp_path / "in" / "t.parquet")
    args = ["rewrite", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"),
            "--model", str(tiny_lm_dir), *[a.format(**{"in": tmp_path / "in", "tmp": tmp_path}) for a in extra]]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


# ---- resume after SIGKILL of the driver ------------------------------------------------------------------
SHARDS, PER_SHARD = 10, 4
SLOW = ["--max-new-tokens", "16", "--min-new-tokens", "16", "--batch-size", "4", "--actors", "1"]


def _descendants(root: int) -> list[int]:
    """Every process below ``root`` (a local Ray's daemons and workers start their own sessions)."""
    out = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout
    table = [tuple(map(int, line.split())) for line in out.splitlines()]
    found, frontier = set(), {root}
    while frontier:
        frontier = {p for p, pp in table if pp in frontier and p not in found}
        found |= frontier
    return sorted(found)


def test_driver_sigkilled_mid_job_then_rerun_writes_every_key_once(ray_cluster, tiny_lm_dir, tmp_path):
    (tmp_path / "in").mkdir()
    expected = set()
    for s in range(SHARDS):
        prompts = [f"a cat number {s} {i}" for i in range(PER_SHARD)]
        if s == 3:
            prompts[1] = ""
        (tmp_path / "in" / f"{s:02d}.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
        expected |= {f"{s:02d}:{i}" for i in range(PER_SHARD)}
    out = tmp_path / "out"
    args = ["rewrite", "--input", str(tmp_path / "in"), "--output", str(out), "--model", str(tiny_lm_dir), *SLOW]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    children = []
    try:
        deadline = time.monotonic() + 300  # a local Ray starts slowly on a loaded machine
        while not list((out / "stats").glob("*_stats.json")):
            assert proc.poll() is None, f"driver exited ({proc.returncode}) early: {proc.stdout.read()[-2000:]}"
            assert time.monotonic() < deadline, "timed out waiting for the first shard"
            time.sleep(0.05)
        children = _descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)  # the driver dies right after a shard finished, mid-job
        proc.wait(timeout=10)
    finally:
        for pid in [proc.pid, *children]:  # the dead driver's own local Ray: only what this test started
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
    done_before = len(list((out / "stats").glob("*_stats.json")))
    assert 0 < done_before < SHARDS, "the driver must die mid-job for this test to mean anything"

    # a killed run may leave a data file without its marker: plant a bogus one for a pending shard
    # (keys of a finished shard); the rerun must replace it, not keep or append to it
    done = sorted(p.name.removesuffix("_stats.json") for p in (out / "stats").glob("*_stats.json"))
    victim = max(set(f"{s:02d}" for s in range(SHARDS)) - set(done))
    (out / "rows" / f"{victim}.parquet").write_bytes((out / "rows" / f"{done[0]}.parquet").read_bytes())

    # the same command again (in-process, on the test's Ray): only the unfinished shards
    assert main(args) == 0
    rows, rejects, stats, summary = read_output(str(out))
    assert summary["shards"]["skipped_already_done"] == done_before
    assert summary["shards"]["processed_this_run"] == SHARDS - done_before
    assert len(stats) == SHARDS and summary["complete"]
    assert rows["key"].is_unique and rejects["key"].is_unique
    assert sorted(rows["key"].tolist() + rejects["key"].tolist()) == sorted(expected)
    assert rejects.to_dict("records") == [{"key": "03:1", "shard": "03", "reason": "empty prompt"}]
    assert set(pd.read_parquet(out / "rows" / f"{victim}.parquet")["shard"]) == {victim}
    assert (rows["new_tokens"] == 16).all()
    assert summary["totals"] == {"records": len(expected), "rows": len(expected) - 1, "rejects": 1, "balanced": True}
