"""The output layout of a shard job and what readers may trust in it: a shard's files count only once
its done marker exists.

    rows/<shard>.parquet        rejects/<shard>.parquet        stats/<shard>_stats.json (the done marker)
    _tmp/                       temporary files of writes in progress (renamed into place when whole)

A killed run can leave a rows file without its marker (written, then killed before the marker), and
a rerun of a changed shard rewrites files that still have an old marker until the new one lands. So
every reader of a job's output (report, the eval jobs' metrics, a job output used as input, the demo)
reads :func:`done_data_files`, never a bare listing of ``rows/``.
"""

from __future__ import annotations

import json
import logging

from pipelines.io.storage import Location

log = logging.getLogger(__name__)

MARKER_SUFFIX = "_stats.json"
TMP_DIR = "_tmp"  # beside rows/, never inside a folder readers scan; same filesystem so a rename is atomic


def rows_file(out: Location, shard_id: str) -> Location:
    return out.child("rows", f"{shard_id}.parquet")


def rejects_file(out: Location, shard_id: str) -> Location:
    return out.child("rejects", f"{shard_id}.parquet")


def marker_file(out: Location, shard_id: str) -> Location:
    return out.child("stats", f"{shard_id}{MARKER_SUFFIX}")


def tmp_dir(out: Location) -> Location:
    return out.child(TMP_DIR)


def done_shard_ids(out: Location) -> dict[str, Location]:
    """shard id -> its marker, for every shard with a done marker (one listing, no reads)."""
    stats_dir = out.child("stats")
    done = {}
    for loc, _ in stats_dir.list_files():
        rel = loc.relative_to(stats_dir)
        if rel.endswith(MARKER_SUFFIX):
            done[rel[: -len(MARKER_SUFFIX)]] = loc
    return done


def done_shards(out: Location, only: set[str] | None = None) -> dict[str, dict]:
    """shard id -> its stats (markers read in parallel: a big job has many thousands)."""
    from concurrent.futures import ThreadPoolExecutor

    markers = {k: v for k, v in done_shard_ids(out).items() if only is None or k in only}
    with ThreadPoolExecutor(max_workers=32) as pool:
        texts = pool.map(lambda loc: loc.read_text(), markers.values())
        return {k: json.loads(t) for k, t in zip(markers, texts)}


def done_data_files(out: Location, kind: str = "rows") -> dict[str, Location]:
    """shard id -> its ``kind`` file (rows or rejects), for the shards that have a done marker and
    that file: what every reader of a job's output reads."""
    if kind not in ("rows", "rejects"):
        raise ValueError(f"kind must be rows or rejects, got {kind!r}")
    present = {loc.relative_to(out.child(kind)) for loc, _ in out.child(kind).list_files()}
    return {sid: out.child(kind, f"{sid}.parquet") for sid in sorted(done_shard_ids(out))
            if f"{sid}.parquet" in present}


def read_done(out: Location, kind: str = "rows", columns: list[str] | None = None):
    """The done shards' ``kind`` files as one pyarrow Table (None when no shard is done)."""
    import pyarrow.dataset as pads

    files = done_data_files(out, kind)
    if not files:
        return None
    ds = pads.dataset([loc.path for loc in files.values()], filesystem=out.fs, format="parquet")
    return ds.to_table(columns=columns)


def clean_tmp(out: Location) -> int:
    """Delete the temporary files a killed run left in OUTPUT/_tmp/ (call while holding the lease)."""
    stale = out.child(TMP_DIR).list_files()
    for loc, _ in stale:
        loc.delete()
    if stale:
        log.info("%s: removed %d temporary files of an interrupted run", out.uri, len(stale))
    return len(stale)


def changed_since_done(shards, stats: dict[str, dict]) -> list[str]:
    """Ids of done shards whose input is not the one their marker records: another size, or another
    modification time where both the marker and the listing have one (markers written before mtimes
    were recorded are compared by size only)."""
    changed = []
    for shard in shards:
        s = stats.get(shard.id)
        if s is None:
            continue
        if s.get("bytes") is not None and s["bytes"] != shard.size:
            changed.append(shard.id)
        elif s.get("mtime") and shard.mtime and s["mtime"] != shard.mtime:
            changed.append(shard.id)
    return changed


def failed_file(out: Location, shard_id: str) -> Location:
    return out.child("failed", f"{shard_id}.json")


def record_failures(out: Location, failed: list[dict], attempted: set[str], run_id: str) -> None:
    """``failed/<shard>.json`` for each shard that failed this run (never a done marker: the next run
    retries it); the records of shards attempted again this run and done now are removed."""
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    failing = {f["shard"]: f for f in failed if f["shard"] != "*"}
    for loc, _ in out.child("failed").list_files():
        sid = loc.relative_to(out.child("failed")).removesuffix(".json")
        if sid in attempted and sid not in failing:
            loc.delete()
    for sid, f in failing.items():
        failed_file(out, sid).write_text(json.dumps({**f, "run_id": run_id, "at": now}, indent=1), tmp_dir(out))
