"""A Ray system error mid-stream (a worker node lost under an actor) restarts the stream over the shards
not yet returned; a shard whose marker was written but whose result never reached the driver is neither
redone nor lost. Other errors are not retried."""

import dataclasses
import json
import pickle
import time

import pyarrow as pa
import pytest
from ray.exceptions import ActorUnavailableError

import pipelines.jobs.shard_job as sj
from pipelines.io.samples import sample_records, webdataset_bytes
from pipelines.io.storage import StorageOptions
from pipelines.jobs.shard_job import ShardJob, ShardJobConfig, run_shard_job
from pipelines.jobs.stages import _ShardWorker


def _schema():
    return pa.schema([("key", pa.string()), ("shard", pa.string())])


class Echo:
    def __call__(self, shard_id, records):
        time.sleep(0.3)  # slow enough that shards remain when the stream fails
        return [{"key": r["key"], "shard": shard_id} for r in records], []


def _job(tmp_path, shards=4, **cfg):
    (tmp_path / "in").mkdir()
    for s in range(shards):
        (tmp_path / "in" / f"{s:05d}.tar").write_bytes(webdataset_bytes(sample_records(s, 2, size=32)))
    job = ShardJob(name="restart", processor=Echo, processor_kwargs={}, row_schema=_schema, settings={})
    return job, ShardJobConfig(input_uri=str(tmp_path / "in"), output_uri=str(tmp_path / "out"), **cfg)


def _failing_stream(real, calls, error, fail_times=1, finished=None):
    """The real stream; on the first ``fail_times`` calls, after two shards are done (the second one's
    result swallowed, as if the actor's node died just after writing its marker), raise ``error``.
    ``finished`` collects the ids of those two shards."""

    def stream(job, cfg, options, pending, run_id):
        calls.append(sorted(s.id for s in pending))
        it = real(job, cfg, options, pending, run_id)
        if len(calls) <= fail_times:
            first = next(it)
            yield first
            second = next(it)  # done on the worker, never seen by the driver
            if finished is not None:
                finished.extend([first["shard"], second["shard"]])
            it.close()
            raise error
        yield from it

    return stream


def test_lost_node_restarts_the_stream_without_redoing_or_losing_a_shard(ray_cluster, tmp_path, monkeypatch):
    """Catches: no restart (the job aborts), a restart over every pending shard (a done shard redone), or
    a restart that forgets the marker-only shard (it would be redone, and its records counted twice)."""
    job, cfg = _job(tmp_path, shards=8)
    calls, finished = [], []
    monkeypatch.setattr(sj, "_stream", _failing_stream(sj._stream, calls, ActorUnavailableError("node died", None),
                                                       finished=finished))
    summary = run_shard_job(job, cfg, StorageOptions(), echo=lambda *_: None)
    assert summary["complete"] and summary["shards"]["done"] == 8 and summary["totals"]["balanced"], summary
    assert len(calls) == 2 and len(calls[0]) == 8 and len(finished) == 2
    assert calls[1] and not set(calls[1]) & set(finished)  # the swallowed shard is not redone
    assert summary["totals"]["records"] == 16


def test_restarts_are_bounded_and_other_errors_are_not_retried(ray_cluster, tmp_path, monkeypatch):
    job, cfg = _job(tmp_path, shards=10, max_job_restarts=1)
    calls = []
    monkeypatch.setattr(sj, "_stream", _failing_stream(sj._stream, calls, ActorUnavailableError("x", None), 2))
    summary = run_shard_job(job, cfg, StorageOptions(), echo=lambda *_: None)
    assert len(calls) == 2  # the first try and one restart, then the error is the job's
    assert any("job aborted: ActorUnavailableError" in f["error"] for f in summary["failed_shards"])

    calls.clear()
    (tmp_path / "b").mkdir()
    job2, cfg2 = _job(tmp_path / "b")
    monkeypatch.setattr(sj, "_stream", _failing_stream(_REAL, calls, ValueError("bad")))
    summary = run_shard_job(job2, cfg2, StorageOptions(), echo=lambda *_: None)
    assert len(calls) == 1  # a ValueError is not the cluster's: no restart
    assert any("job aborted: ValueError: bad" in f["error"] for f in summary["failed_shards"])


_REAL = sj._stream


def test_max_job_restarts_is_validated():
    with pytest.raises(ValueError, match="max_job_restarts"):
        ShardJobConfig(input_uri="a", output_uri="b", max_job_restarts=-1)


def _dropping_stream(real, calls, drop=2):
    """The real stream, except that on its first call the last ``drop`` pending shards never run and the
    stream ends without them and without an error: what Ray Data does when it drops a lost node's block
    under max_errored_blocks."""

    def stream(job, cfg, options, pending, run_id):
        calls.append(sorted(s.id for s in pending))
        yield from real(job, cfg, options, pending[:-drop] if len(calls) == 1 else pending, run_id)

    return stream


def test_shards_dropped_while_a_node_died_are_restarted(ray_cluster, tmp_path, monkeypatch):
    """Catches: a stream that ends without some shards is taken as finished although a node died (the
    flaky multinode failure: those shards recorded lost, exit 1), or the restart redoes returned shards."""
    job, cfg = _job(tmp_path, shards=6, node_loss_wait=7.5)
    calls, waits = [], []
    monkeypatch.setattr(sj, "_stream", _dropping_stream(_REAL, calls))
    monkeypatch.setattr(sj, "lost_nodes", lambda before, wait: waits.append(wait) or {"f" * 56})
    summary = run_shard_job(job, cfg, StorageOptions(), echo=lambda *_: None)
    assert summary["complete"] and summary["shards"]["done"] == 6 and summary["totals"]["balanced"], summary
    assert calls == [[f"{s:05d}" for s in range(6)], ["00004", "00005"]] and waits == [7.5]
    assert summary["totals"]["records"] == 12


def test_shards_missing_with_every_node_alive_are_lost_not_restarted(ray_cluster, tmp_path, monkeypatch):
    """Catches: restarting a stream whose missing shards are poison (no node died): each restart would
    spend their attempts again."""
    job, cfg = _job(tmp_path, shards=4)
    calls = []
    monkeypatch.setattr(sj, "_stream", _dropping_stream(_REAL, calls))
    monkeypatch.setattr(sj, "lost_nodes", lambda before, wait: set())
    summary = run_shard_job(job, cfg, StorageOptions(), echo=lambda *_: None)
    assert len(calls) == 1 and not summary["complete"] and summary["shards"]["done"] == 2
    assert sorted(f["shard"] for f in summary["failed_shards"]) == ["00002", "00003"]
    assert all(f["error"].startswith("lost:") for f in summary["failed_shards"])


def test_lost_nodes_waits_for_ray_to_declare_a_node_dead(monkeypatch):
    import pipelines.jobs.node_loss as nl

    views = iter([{"a", "b"}, {"a", "b"}, {"a"}])
    monkeypatch.setattr(nl, "alive_nodes", lambda: next(views))
    assert nl.lost_nodes({"a", "b"}, wait=5, poll=0.01) == {"b"}  # dead on the third look
    monkeypatch.setattr(nl, "alive_nodes", lambda: {"a", "b"})
    t0 = time.monotonic()
    assert nl.lost_nodes({"a", "b"}, wait=0.2, poll=0.01) == set() and time.monotonic() - t0 >= 0.2
    t0 = time.monotonic()
    assert nl.lost_nodes({"a"}, wait=60, poll=0.01) == set() and time.monotonic() - t0 < 1  # one node: no wait


class MustNotRun:
    def __call__(self, shard_id, records):
        raise AssertionError(f"shard {shard_id} processed again")


def test_a_shard_this_run_already_wrote_is_not_redone(ray_cluster, tmp_path):
    """Ray re-runs a finished task whose result was lost with its node (lineage reconstruction) or retries
    one whose actor died after writing the marker: the worker returns the marker's counts instead of
    running the model again. Catches: the worker redoes it (GPU time spent twice, its stats rewritten)."""

    job, cfg = _job(tmp_path, shards=2)
    summary = run_shard_job(job, cfg, StorageOptions(), echo=lambda *_: None)
    marker = tmp_path / "out" / "stats" / "00001_stats.json"
    stats = json.loads(marker.read_text())
    again = dataclasses.replace(job, processor=MustNotRun)
    shard = {"id": "00001", "uri": stats["input"], "format": stats["format"], "size": stats["bytes"],
             "mtime": stats["mtime"]}
    worker = _ShardWorker(again, StorageOptions(), str(tmp_path / "out"), run_id=summary["run_id"])
    result = worker._one(json.dumps(shard), b"", "", 0.0)
    assert result == {"shard": "00001", "size": stats["bytes"], "processed": 2, "records": 2, "rows": 2,
                      "rejects": 0, "error": ""}
    assert json.loads(marker.read_text()) == stats  # not rewritten
    other = _ShardWorker(again, StorageOptions(), str(tmp_path / "out"), run_id="another-run")
    assert "processed again" in other._one(json.dumps(shard), pickle.dumps([{"key": "k"}]), "", 0.0)["error"]



@pytest.mark.parametrize("command", ["mine", "label", "rewrite"])
def test_restart_flags_reach_the_job_config(command):
    """--max-job-restarts and --node-loss-wait on every shard job's command line set the config the
    driver runs with (catches a flag parsed but not passed on); a negative value is refused by name."""
    from pipelines.cli import build_parser
    from pipelines.jobs.cli import job_config

    base = [command, "--input", "in", "--output", "out"] + (["--model", "m"] if command == "rewrite" else [])
    args = build_parser().parse_args(base + ["--max-job-restarts", "5", "--node-loss-wait", "2.5"])
    cfg = job_config(args)
    assert (cfg.max_job_restarts, cfg.node_loss_wait) == (5, 2.5)
    default = job_config(build_parser().parse_args(base))
    assert (default.max_job_restarts, default.node_loss_wait) == (2, 30.0)
    with pytest.raises(ValueError, match="node_loss_wait"):
        job_config(build_parser().parse_args(base + ["--node-loss-wait", "-1"]))


def test_shards_missing_after_the_restarts_are_spent_say_a_node_died(ray_cluster, tmp_path, monkeypatch):
    """With --max-job-restarts 0 a stream that ends without 2 shards while a node died records them as
    lost with that node, the spent restarts and how to resume. Catches the old, wrong reason ("the
    process working on it died on each of its attempts") for shards that never ran."""
    job, cfg = _job(tmp_path, shards=4, max_job_restarts=0)
    calls = []
    monkeypatch.setattr(sj, "_stream", _dropping_stream(_REAL, calls))
    monkeypatch.setattr(sj, "lost_nodes", lambda before, wait: {"ab" * 28})
    summary = run_shard_job(job, cfg, StorageOptions(), echo=lambda *_: None)
    assert len(calls) == 1 and not summary["complete"] and summary["shards"]["done"] == 2
    errors = {f["shard"]: f["error"] for f in summary["failed_shards"]}
    assert sorted(errors) == ["00002", "00003"]
    for e in errors.values():
        assert e.startswith("lost with a node: 1 node died (abababab)") and "--max-job-restarts 0" in e, e
        assert "rerun" in e and "attempts" not in e
