"""The end-of-run summary of a shard job (summary.json): facts a person can trust at a glance.

- Reject reasons are grouped by kind (:func:`reason_class`): the values inside a reason (quoted keys,
  numbers, the parenthesised detail) are dropped, so a million duplicate keys are one line, not a
  million; the summary keeps the top ``TOP_KINDS`` kinds and counts the rest as "N more kinds".
- Throughput counts the records that reached the processor (the model), not the rejects that never
  did (an unreadable image costs nothing): ``processed_per_s``, labelled so.
- Every cut list says how much was cut ("and N more").
- A processor's own per-shard counts (the stats marker's ``processor``) are summed over the done
  shards into ``processor``; mining's ``slot_steps`` / ``slot_capacity`` also give
  ``batch_occupancy``: occupied PEZ slots / slots, averaged over all batch steps of all done shards.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

from pipelines.jobs.markers import done_shards

TOP_KINDS = 20  # reject kinds kept by name in summary.json (the rest are counted together)
MORE_KINDS = "(more kinds)"  # the key that counts them


def reason_class(reason: str) -> str:
    """The kind of a reject reason, without the values that make each one unique:
    'corrupt or truncated image (broken data stream ...)' -> 'corrupt or truncated image',
    "duplicate key 'k9' in this shard (first at row 3)" -> "duplicate key '…' in this shard",
    'prompt has 412 tokens' -> 'prompt has N tokens'."""
    kind = reason.split(" (", 1)[0].strip()
    kind = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", kind)
    kind = re.sub(r"\d+(\.\d+)?", "N", kind)
    return kind[:120] or "unknown"


def top_kinds(counts: dict[str, int], n: int = TOP_KINDS) -> dict[str, int]:
    """The ``n`` most frequent kinds, and the others counted under MORE_KINDS."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    kept = dict(ranked[:n])
    if len(ranked) > n:
        kept[MORE_KINDS] = sum(c for _, c in ranked[n:])
    return kept


def build_summary(job, cfg, options, shards, out, skipped, progress, failed) -> dict:
    stats = done_shards(out, only={s.id for s in shards})
    totals = {k: sum(s[k] for s in stats.values()) for k in ("records", "rows", "rejects")}
    totals["balanced"] = totals["records"] == totals["rows"] + totals["rejects"]
    reasons: dict[str, int] = {}
    for s in stats.values():
        for reason, n in s.get("reject_reasons", {}).items():
            kind = reason_class(reason)  # markers of older runs kept finer reasons
            reasons[kind] = reasons.get(kind, 0) + n
    counts: dict[str, float] = {}
    for s in stats.values():
        for k, v in (s.get("processor") or {}).items():
            if isinstance(v, (int, float)):
                counts[k] = counts.get(k, 0) + v
    if counts.get("slot_capacity"):
        counts["batch_occupancy"] = round(counts["slot_steps"] / counts["slot_capacity"], 4)
    complete = len(stats) == len(shards)
    n_failed = sum(1 for f in failed if f["shard"] != "*")  # "*": the whole Ray job stopped
    if progress.total_shards == 0:
        status = f"nothing to do: all {len(shards)} shards were already done"
    else:
        status = "complete" if complete else f"incomplete: {len(shards) - len(stats)} shards not done (rerun to retry)"
    return {
        "job": job.name, "unit": job.unit, "status": status, "complete": complete,
        "input": cfg.input_uri, "output": cfg.output_uri,
        "shards": {"total": len(shards), "done": len(stats), "failed": n_failed,
                   "processed_this_run": progress.shards - n_failed, "skipped_already_done": skipped},
        "totals": totals,
        "this_run": {"records": progress.records, "rejects": progress.rejects, "processed": progress.processed,
                     "seconds": round(progress.elapsed, 3), "records_per_s": round(progress.records_rate, 3),
                     "processed_per_s": round(progress.rate, 3)},
        "processor": counts, "reject_reasons": top_kinds(reasons), "reject_kinds": len(reasons), "failed_shards": failed,
        "settings": job.settings,
        "storage": options.describe(), "ray": {"address": cfg.address or "local", "actors": cfg.actors,
                                               "cpus_per_actor": cfg.cpus_per_actor,
                                               "gpus_per_actor": cfg.gpus_per_actor},
        "files": {k: out.child(k).uri for k in ("rows", "rejects", "stats", "failed")},
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
