"""The Ray stages of a shard job (shard_job.py): the read task and the processor actor that writes one
shard's rows, rejects and, last, its done marker. They run on Ray workers, pickled by reference."""

from __future__ import annotations

import json
import logging
import pickle
import socket
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable

from pipelines.io.shards import Shard, ShardError
from pipelines.io.storage import StorageOptions
from pipelines.jobs.credentials import refreshed
from pipelines.jobs.lease import LeaseLost, lease_owner
from pipelines.jobs.markers import marker_file, rejects_file, rows_file, tmp_dir
from pipelines.jobs.summary import reason_class

if TYPE_CHECKING:
    from pipelines.jobs.shard_job import ShardJob

log = logging.getLogger(__name__)

REJECT_FIELDS = ("key", "shard", "reason")


def _parquet_bytes(rows: list[dict], schema) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows, schema=schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def reject_schema():
    import pyarrow as pa

    return pa.schema([("key", pa.string()), ("shard", pa.string()), ("reason", pa.string())])


# ---- Ray stages --------------------------------------------------------------------------------
def _read_stage(row: dict, reader: Callable, reader_kwargs: dict, options: StorageOptions, broker=None) -> dict:
    """Read task: one shard -> one row holding all its records (pickled; one row cannot be split)."""
    shard = Shard(**json.loads(row["shard"]))
    options = refreshed(options, broker)  # forwarded temporary credentials about to expire: fresh ones
    start = time.monotonic()
    try:
        records = list(reader(shard, options.resolve(shard.uri), **reader_kwargs))
        error = ""
    except (ShardError, OSError) as e:
        records, error = [], str(e)
    except Exception as e:  # noqa: BLE001 -- any unreadable shard fails alone; a rerun retries it
        records, error = [], f"{shard.uri}: cannot read ({type(e).__name__}: {e})"
    return {"shard": row["shard"], "records": pickle.dumps(records, protocol=5), "error": error,
            "read_seconds": time.monotonic() - start}


class _ShardWorker:
    """Actor: builds the processor once, then per shard: process, check, write data, write marker."""

    def __init__(self, job: ShardJob, options: StorageOptions, output_uri: str, run_id: str = "", broker=None):
        self.job, self.options, self.run_id, self.broker, self.output_uri = job, options, run_id, broker, output_uri
        self.out = options.resolve(output_uri)
        self.processor = job.processor(**job.processor_kwargs)
        self.host = socket.gethostname()

    def __call__(self, batch: dict) -> dict:
        results = [self._one(s, r, e, float(t)) for s, r, e, t in
                   zip(batch["shard"], batch["records"], batch["error"], batch["read_seconds"])]
        return {k: [r[k] for r in results]
                for k in ("shard", "records", "processed", "rows", "rejects", "size", "error")}

    def _one(self, shard_json: str, blob: bytes, read_error: str, read_seconds: float) -> dict:
        shard = Shard(**json.loads(shard_json))
        if self.broker is not None:  # forwarded temporary credentials about to expire: fresh ones
            self.options = refreshed(self.options, self.broker)
            self.out = self.options.resolve(self.output_uri)
        base = {"shard": shard.id, "size": shard.size, "processed": 0}
        done = self._done_by_this_run(shard)
        if done is not None:  # a retry or a lineage re-execution after a lost node: the work is in the output
            log.info("shard %s: already done by this run on %s; not redone", shard.id, done.get("worker"))
            return {**base, "records": done["records"], "processed": done.get("processed", done["records"]),
                    "rows": done["rows"], "rejects": done["rejects"], "error": ""}
        if read_error:
            log.warning("shard %s failed to read: %s", shard.id, read_error)
            return {**base, "records": 0, "rows": 0, "rejects": 0, "error": read_error}
        records = pickle.loads(blob)
        start = time.monotonic()
        try:
            rows, rejects = self._process(shard, records)
            processed = sum(1 for r in records if not r.get("error"))  # reached the processor (the model)
            self._write(shard, records, rows, rejects, processed, read_seconds, time.monotonic() - start)
        except Exception as e:  # noqa: BLE001 -- the shard fails (no marker: a rerun retries it); the job goes on
            log.exception("shard %s failed", shard.id)
            return {**base, "records": len(records), "rows": 0, "rejects": 0, "error": f"{type(e).__name__}: {e}"}
        return {**base, "records": len(records), "processed": processed, "rows": len(rows), "rejects": len(rejects),
                "error": ""}

    def _done_by_this_run(self, shard: Shard) -> dict | None:
        """The shard's marker when this run already wrote it (Ray re-runs a task whose result was lost with
        a node, and retries one whose actor died after the marker was written), else None."""
        marker = marker_file(self.out, shard.id)
        if not self.run_id or not marker.exists():
            return None
        stats = json.loads(marker.read_text())
        return stats if stats.get("run_id") == self.run_id else None

    def _process(self, shard: Shard, records: list[dict]) -> tuple[list[dict], list[dict]]:
        good = [r for r in records if not r.get("error")]
        rejects = [{"key": r["key"], "shard": shard.id, "reason": r["error"]} for r in records if r.get("error")]
        rows, more = self.processor(shard.id, good) if good else ([], [])
        rejects += [{"key": r["key"], "shard": shard.id, "reason": r["reason"]} for r in more]
        counted = sorted([r["key"] for r in rows] + [r["key"] for r in rejects])
        if counted != sorted(r["key"] for r in records):
            raise RuntimeError(f"{self.job.name} processor returned {len(rows)} rows + {len(rejects)} rejects "
                               f"for {len(records)} records: keys do not match")
        return rows, rejects

    def _write(self, shard, records, rows, rejects, processed, read_seconds, seconds) -> None:
        reasons: dict[str, int] = {}
        for r in rejects:
            reasons[reason_class(r["reason"])] = reasons.get(reason_class(r["reason"]), 0) + 1
        if self.run_id and lease_owner(self.out) != self.run_id:  # fencing: never write over a new owner's shards
            raise LeaseLost(f"{self.out.uri}: this run ({self.run_id}) no longer holds the output's lease")
        tmp = tmp_dir(self.out)
        rows_file(self.out, shard.id).write_bytes(_parquet_bytes(rows, self.job.row_schema()), tmp)
        rejects_file(self.out, shard.id).write_bytes(_parquet_bytes(rejects, reject_schema()), tmp)
        stats = {"shard": shard.id, "input": shard.uri, "format": shard.format, "bytes": shard.size, "mtime": shard.mtime,
                 "records": len(records), "processed": processed, "rows": len(rows), "rejects": len(rejects),
                 "reject_reasons": reasons, "read_seconds": round(read_seconds, 3), "process_seconds": round(seconds, 3),
                 "worker": self.host, "run_id": self.run_id, "finished_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}
        if hasattr(self.processor, "shard_stats"):  # e.g. mining's batch occupancy counts
            stats["processor"] = self.processor.shard_stats(shard.id)
        marker_file(self.out, shard.id).write_text(json.dumps(stats, indent=1), tmp)  # last: the done marker
