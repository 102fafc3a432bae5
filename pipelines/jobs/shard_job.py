"""Generic resumable shard job on Ray Data: input shards -> per-shard Parquet rows + rejects + marker.

A job is "a processor that turns one shard's records into rows + rejects". This module does the rest:
find the shards, skip the ones already done, stream the others through Ray Data (read tasks ->
an actor pool of processors), write each shard's output, report progress and a summary.

Output layout under OUTPUT (a local folder or an s3:// prefix):

    _job.json                  what the job is (input, settings); a rerun with other settings is refused
    rows/<shard>.parquet       the processor's rows (one file per input shard, one PUT)
    rejects/<shard>.parquet    key, shard, reason (always written, possibly empty)
    stats/<shard>_stats.json   written LAST: the shard's done marker and its counts
    summary.json               the job summary (rewritten at the end of every run)

Resume: a shard is done iff its stats marker exists. Data files are written whole (single PUT or
rename), so a run killed at any moment leaves either nothing or a complete file that the rerun
replaces; every key therefore appears exactly once across rows/ and rejects/.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from pipelines.jobs.markers import (MARKER_SUFFIX, changed_since_done, clean_tmp, done_shard_ids,  # noqa: F401
                                    done_shards, marker_file, record_failures, rejects_file, rows_file,
                                    tmp_dir)
from pipelines.jobs.credentials import expiring, start_broker
from pipelines.jobs.lease import Lease, LeaseHeld
from pipelines.jobs.node_loss import alive_nodes, is_system_error, lost_nodes
from pipelines.jobs.progress import Progress, format_summary
from pipelines.jobs.summary import build_summary, reason_class  # noqa: F401 (reason_class: API)
from pipelines.io.shards import Shard, ShardError, find_shards, read_shard
from pipelines.io.storage import Location, StorageOptions, normalize_uri
from pipelines.jobs.stages import REJECT_FIELDS, _read_stage, _ShardWorker, reject_schema  # noqa: F401 (API)

log = logging.getLogger(__name__)



class JobConflict(ValueError):
    """The output folder holds a job with different settings."""


@dataclass
class ShardJob:
    """What a concrete job supplies (module-level callables: they are pickled to Ray workers)."""

    name: str  # job name ("mine"), in logs, manifest and summary
    processor: type  # class(**processor_kwargs) loaded once per actor; (shard_id, records) -> (rows, rejects)
    processor_kwargs: dict  # constructor arguments (model, settings)
    row_schema: Callable[[], Any]  # -> pyarrow.Schema of the rows files
    settings: dict  # what determines the rows; stored in _job.json and compared on rerun
    reader: Callable = read_shard  # (Shard, Location, **reader_kwargs) -> iterator of record dicts with "key"
    reader_kwargs: dict = field(default_factory=dict)
    find: Callable = find_shards  # (Location, fmt) -> list[Shard]
    unit: str = "records"  # what one record is, for progress and summary: images, prompts
    # settings added after a release, each with the value every job before it ran with: a manifest
    # without the key resumes when the key has that value (so adding a setting never strands old outputs)
    setting_defaults: dict = field(default_factory=dict)


@dataclass
class ShardJobConfig:
    input_uri: str  # folder/prefix of shards, or one shard
    output_uri: str  # output folder/prefix
    actors: int = 1  # processor actors (one model each); >= 1
    cpus_per_actor: float = 0.5  # CPUs reserved per actor; fractional so read tasks always get a CPU
    gpus_per_actor: float = 0.0  # GPUs per actor (1 on GPU nodes; 0 = CPU)
    read_cpus: float = 0.25  # CPUs per read task (reads are I/O bound)
    max_reads_in_flight: int = 0  # concurrent read tasks; 0 = 2 per actor (bounds memory: a shard each)
    input_format: str = "auto"  # auto | webdataset | parquet | folder
    address: str | None = None  # Ray address; None starts a local Ray for this job
    progress_interval: float = 2.0  # seconds between progress lines
    on_changed: str = "redo"  # a done shard whose input changed since: redo (default) | refuse
    max_shard_retries: int = 2  # retries of a shard whose actor died; then it is recorded as failed (a poison shard)
    max_job_restarts: int = 2  # restarts of the whole stream after a Ray system error (a node lost mid-job)
    # when a stream ends without some shards: seconds to wait for Ray to declare a node dead (then the
    # stream restarts over them) before they are recorded as lost; only on clusters of several nodes
    node_loss_wait: float = 30.0
    wait_lease: float = 0.0  # seconds to wait for another driver's lease on the output; 0 = refuse at once
    lease_seconds: float = 60.0  # lease TTL: a driver silent this long is taken for dead (renewed every ttl/3)

    def __post_init__(self):
        if self.actors < 1:
            raise ValueError(f"actors must be >= 1, got {self.actors}")
        if self.cpus_per_actor < 0 or self.gpus_per_actor < 0 or self.read_cpus < 0:
            raise ValueError("cpus_per_actor, gpus_per_actor and read_cpus must be >= 0")
        if self.cpus_per_actor == 0 and self.gpus_per_actor == 0:
            raise ValueError("an actor needs some CPU or GPU (cpus_per_actor or gpus_per_actor > 0)")
        if self.on_changed not in ("redo", "refuse"):
            raise ValueError(f"on_changed must be redo or refuse, got {self.on_changed!r}")
        if self.wait_lease < 0 or self.lease_seconds <= 0:
            raise ValueError(f"wait_lease must be >= 0 and lease_seconds > 0, got {self.wait_lease}, "
                             f"{self.lease_seconds}")
        if self.max_job_restarts < 0:
            raise ValueError(f"max_job_restarts must be >= 0, got {self.max_job_restarts}")
        if self.node_loss_wait < 0:
            raise ValueError(f"node_loss_wait must be >= 0 seconds, got {self.node_loss_wait}")
        if self.max_shard_retries < 0:
            raise ValueError(f"max_shard_retries must be >= 0, got {self.max_shard_retries}")
        if self.max_reads_in_flight < 0:
            raise ValueError(f"max_reads_in_flight must be >= 0, got {self.max_reads_in_flight}")


# ---- driver ------------------------------------------------------------------------------------
def check_manifest(out: Location, job: ShardJob, cfg: ShardJobConfig) -> None:
    """Write _job.json on the first run; refuse a rerun whose input or settings differ."""
    manifest = out.child("_job.json")
    mine = {"job": job.name, "input": normalize_uri(cfg.input_uri), "format": cfg.input_format,
            "settings": job.settings}
    if manifest.exists():
        old = json.loads(manifest.read_text())
        if isinstance(old.get("input"), str):  # written by a version that kept the URI as typed
            old["input"] = normalize_uri(old["input"])
        diff = [k for k in ("job", "input", "format") if old.get(k) != mine[k]]
        old["settings"] = {**job.setting_defaults, **old.get("settings", {})}
        diff += [f"settings.{k}" for k in sorted(set(old["settings"]) | set(job.settings))
                 if old["settings"].get(k) != job.settings.get(k)]
        if diff:
            details = ", ".join(f"{k}: {_get(old, k)!r} there vs {_get(mine, k)!r} now" for k in diff)
            raise JobConflict(f"{out.uri} holds a job with other settings ({details}); "
                              "use a new output location or the same settings to resume")
        return
    manifest.write_text(json.dumps({**mine, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
                                   indent=1))


def _count(items: list | int, noun: str) -> str:
    """"1 shard", "3 shards": the count of ``items`` (a collection, or the number itself) and the noun."""
    n = items if isinstance(items, int) else len(items)
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _some(items: list, n: int = 5) -> str:
    """The first ``n`` items, then 'and N more' (a cut list always says so)."""
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(map(str, items[:n])) + more


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def _start_ray(address: str | None):
    """Connect to ``address`` or start a local Ray; returns True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    if address:
        ray.init(address=address, log_to_driver=True, configure_logging=False)
    else:
        ray.init(include_dashboard=False, log_to_driver=True, configure_logging=False)
    return True


def _stream(job: ShardJob, cfg: ShardJobConfig, options: StorageOptions, pending: list[Shard], run_id: str):
    """Run the pending shards through Ray Data; yields each shard's result row as it finishes."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # our own progress lines (one per shard) read well in job logs
    if not log.isEnabledFor(logging.INFO):  # Ray Data's plan/finish INFO lines only with -v
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"
    # a shard that killed its actor on every attempt is an errored block: skipped (the driver records it
    # as failed), the other shards go on; each shard can err once, so the budget is the number of shards.
    # Set before the dataset is built: a Dataset keeps the context of its creation.
    budget, ctx.max_errored_blocks = ctx.max_errored_blocks, len(pending)
    reads = min(cfg.max_reads_in_flight or 2 * cfg.actors, len(pending))  # never more read tasks than shards
    items = [{"shard": json.dumps(dataclasses.asdict(s))} for s in pending]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    broker = start_broker(options)
    ds = ds.map(_read_stage, fn_kwargs={"reader": job.reader, "reader_kwargs": job.reader_kwargs,
                                        "options": options, "broker": broker},
                num_cpus=cfg.read_cpus, compute=ray.data.TaskPoolStrategy(size=reads))
    with warnings.catch_warnings():
        # Ray 2.60 has no named parameter for max_task_retries yet, so it goes through the deprecated
        # ray_remote_args (removed in 2.64; pyproject pins 2.60.0): keep that warning out of users' logs.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        ds = ds.map_batches(
            _ShardWorker, fn_constructor_kwargs={"job": job, "options": options, "output_uri": cfg.output_uri,
                                                 "run_id": run_id, "broker": broker},
            batch_size=1, batch_format="numpy", num_cpus=cfg.cpus_per_actor, num_gpus=cfg.gpus_per_actor or None,
            # one shard per actor at a time: an actor killed by a poison shard takes no innocent queued shard
            # with it (each would spend a retry); the next shard's read still overlaps in the read tasks
            compute=ray.data.ActorPoolStrategy(size=cfg.actors, max_tasks_in_flight_per_actor=1),
            max_task_retries=cfg.max_shard_retries,  # a lost actor is restarted and its shard retried, boundedly
        )
    try:
        yield from ds.iter_rows()
    finally:
        ctx.max_errored_blocks = budget


def _run_pending(job, cfg, options, out, pending, run_id, progress, returned: set, failed: list) -> str | None:
    """Stream ``pending`` through Ray, recording each returned shard in ``returned`` / ``failed``.
    When a worker node died under the stream (a Ray system error stopped it, or it ended without some
    shards while a node that was alive at its start is now dead: node_loss.py), restart it over the
    shards not yet returned, at most ``cfg.max_job_restarts`` times: a shard whose marker was written
    but whose result never reached the driver counts as done (read back from its marker), so none is
    redone and none is lost. Any other error, or one restart too many, propagates; shards missing with
    every node alive (a poison shard) are left for the caller to record as lost. Returns why shards are
    missing when a node died but the restarts were spent (None: poison, or none missing)."""
    todo, restarts = pending, 0
    while todo:
        nodes = alive_nodes()
        try:
            for result in _stream(job, cfg, options, todo, run_id):
                returned.add(result["shard"])
                if result["error"]:
                    failed.append({"shard": result["shard"], "error": result["error"]})
                progress.update(int(result["records"]), int(result["rejects"]), int(result["size"]),
                                failed=bool(result["error"]), processed=int(result["processed"]))
        except Exception as e:  # noqa: BLE001 -- only Ray's system errors restart; the rest propagate
            if restarts >= cfg.max_job_restarts or not is_system_error(e):
                raise
            why = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        else:
            missing = [s for s in todo if s.id not in returned]
            gone = lost_nodes(nodes, cfg.node_loss_wait) if missing else set()
            if not gone:
                return None
            dead = sorted(g[:8] for g in gone)
            why = f"{_count(dead, 'node')} died ({_some(dead)}) and the stream ended without {_count(missing, 'shard')}"
            if restarts >= cfg.max_job_restarts:
                return (f"lost with a node: {why}, after {_count(restarts, 'stream restart')} "
                        f"(--max-job-restarts {cfg.max_job_restarts}); rerun the command to resume it")
        restarts += 1
        for sid, st in done_shards(out, only={s.id for s in todo} - returned).items():
            returned.add(sid)
            progress.update(int(st["records"]), int(st["rejects"]), int(st["bytes"]),
                            processed=int(st.get("processed", st["records"])))
        todo = [s for s in pending if s.id not in returned]
        log.warning("%s: Ray lost part of the cluster (%s); restarting over the %d shards not yet done "
                    "(restart %d of at most %d)", job.name, why, len(todo), restarts, cfg.max_job_restarts)


def run_shard_job(job: ShardJob, cfg: ShardJobConfig, options: StorageOptions, echo=print) -> dict:
    """Run (or resume) the job; returns the summary (also written to OUTPUT/summary.json).

    The whole run holds the output's lease (lease.py): a second driver on the same output waits
    ``cfg.wait_lease`` seconds or refuses (LeaseHeld)."""
    # one spelling per location: absolute local paths (Ray workers run in other folders), s3://b/p
    cfg = dataclasses.replace(cfg, input_uri=normalize_uri(cfg.input_uri), output_uri=normalize_uri(cfg.output_uri))
    root, out = options.resolve(cfg.input_uri), options.resolve(cfg.output_uri)
    shards = job.find(root, cfg.input_format)
    ids = [s.id for s in shards]
    if len(set(ids)) != len(ids):
        raise ShardError(f"{root.uri}: two shards share a name (e.g. a.tar and a.parquet)")
    if out.child("_job.json").exists():  # a finished job run again: read only, no lease, nothing rewritten
        check_manifest(out, job, cfg)
        done = done_shards(out, only={s.id for s in shards})
        if len(done) == len(shards) and not changed_since_done(shards, done):
            return _nothing_to_do(job, cfg, options, root, out, shards, echo)
    # the driver's lease uses the driver's own chain (refreshing itself), never frozen credentials
    own = dataclasses.replace(options, credentials=None).resolve(cfg.output_uri)
    with Lease(own, ttl=cfg.lease_seconds).acquire(wait=cfg.wait_lease) as lease:
        return _run_leased(job, cfg, options, root, out, shards, lease, echo)


def _nothing_to_do(job, cfg, options, root, out, shards, echo) -> dict:
    """Every shard done and unchanged: say so. summary.json is rewritten only when it said otherwise
    (so that it tells the last run's outcome); no data file, marker or lease is written."""
    echo(f"{job.name}: {len(shards)} shards in {root.uri}: {len(shards)} already done, 0 to do")
    summary = build_summary(job, cfg, options, shards, out, len(shards), Progress(job.name, 0, unit=job.unit), [])
    path = out.child("summary.json")
    try:
        old = json.loads(path.read_text()).get("status") if path.exists() else None
    except ValueError:
        old = None
    if old != summary["status"]:
        path.write_text(json.dumps(summary, indent=1))
    echo(format_summary(summary))
    return summary


def _run_leased(job, cfg, options, root, out, shards, lease, echo) -> dict:
    check_manifest(out, job, cfg)
    clean_tmp(out)
    done = done_shards(out, only={s.id for s in shards})
    changed = changed_since_done(shards, done)
    if changed and cfg.on_changed == "refuse":
        raise JobConflict(f"{out.uri}: {_count(changed, 'shard')} changed since they were done "
                          f"({_some(changed)}); rerun with --on-changed redo to redo them")
    for sid in changed:  # not done any more: if the redo fails, the next run retries it
        marker_file(out, sid).delete()
        done.pop(sid)
    pending = [s for s in shards if s.id not in done]
    echo(f"{job.name}: {len(shards)} shards in {root.uri}: {len(shards) - len(pending)} already done, "
         f"{len(pending)} to do")
    if changed:
        echo(f"{job.name}: {_count(changed, 'shard')} changed since they were done: redone ({_some(changed)})")
    progress = Progress(job.name, len(pending), sum(s.size for s in pending), cfg.progress_interval, unit=job.unit)
    failed = []
    if pending:
        started = _start_ray(cfg.address)
        returned: set[str] = set()
        try:
            node_loss = _run_pending(job, cfg, options, out, pending, lease.run_id, progress, returned, failed)
        except Exception as e:  # noqa: BLE001 -- e.g. the cluster went away: finished shards stay done
            log.error("%s: the Ray job stopped: %s", job.name, e)
            failed.append({"shard": "*", "error": f"job aborted: {type(e).__name__}: {str(e).splitlines()[0][:300]}"})
        else:
            lost = [s for s in pending if s.id not in returned]  # its actor (or read task) died every time
            for s in lost:
                failed.append({"shard": s.id, "error": node_loss or f"lost: the process working on it died on each "
                                                       f"of its {cfg.max_shard_retries + 1} attempts (a crash, "
                                                       "os._exit or out of memory; see the Ray logs)"})
                progress.update(0, 0, s.size, failed=True)
        finally:
            if started:
                import ray

                ray.shutdown()
    if lease.lost:  # another driver took the output over (this one stalled past the TTL): leave it its summary
        raise LeaseHeld(f"{out.uri}: this driver's lease was taken over by another driver during the run; "
                        "shards it finished stay done, its summary is not written")
    if expiring(options):  # a long run outlived the driver's forwarded credentials: resolve them again
        options = dataclasses.replace(options, credentials=StorageOptions.from_env(options.endpoint_url).credentials)
        out = options.resolve(cfg.output_uri)
    record_failures(out, failed, {s.id for s in pending}, lease.run_id)
    summary = build_summary(job, cfg, options, shards, out, len(shards) - len(pending), progress, failed)
    summary["run_id"] = lease.run_id
    summary["changed_redone"] = changed
    out.child("summary.json").write_text(json.dumps(summary, indent=1))
    echo(format_summary(summary))
    return summary
