"""Progress lines and the end-of-job summary of a shard job (printed by the driver, on stderr/stdout).

Progress is one line per finished shard, at most one every ``interval`` seconds (plus the last), so
it reads the same in a terminal and in a cluster job's log: shards done / total, records (named by
the job's unit: images, prompts), records/s and an ETA from the bytes (or shards) still to do.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


@dataclass
class Progress:
    name: str  # job name shown at the start of each line
    total_shards: int  # shards of this run (pending ones)
    total_bytes: int = 0  # input bytes of this run; 0 when unknown (ETA from shard counts then)
    interval: float = 2.0  # seconds between lines (the last line always prints)
    unit: str = "records"  # what a record is, in the lines: images, prompts
    stream: object = field(default=None, repr=False)  # None: sys.stderr at the time of printing
    shards: int = 0
    records: int = 0
    rejects: int = 0
    processed: int = 0  # records that reached the processor (rejects found while reading never do)
    failed: int = 0
    bytes_done: int = 0
    started: float = field(default_factory=time.monotonic)
    _last: float = 0.0

    def update(self, records: int, rejects: int, size: int, failed: bool = False, processed: int | None = None) -> None:
        self.shards += 1
        self.records += records
        self.processed += records if processed is None else processed
        self.rejects += rejects
        self.bytes_done += size
        self.failed += int(failed)
        now = time.monotonic()
        if now - self._last >= self.interval or self.shards == self.total_shards:
            self._last = now
            print(self.line(), file=self.stream or sys.stderr, flush=True)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def rate(self) -> float:
        """Throughput: records processed (by the model) per second."""
        return self.processed / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def records_rate(self) -> float:
        return self.records / self.elapsed if self.elapsed > 0 else 0.0

    def eta(self) -> float | None:
        if self.shards == 0:
            return None
        if self.total_bytes and self.bytes_done:
            return self.elapsed * (self.total_bytes - self.bytes_done) / self.bytes_done
        return self.elapsed * (self.total_shards - self.shards) / self.shards

    def line(self) -> str:
        eta = self.eta()
        failed = f", {self.failed} failed" if self.failed else ""
        return (f"{self.name}: {self.shards}/{self.total_shards} shards{failed}, {self.records:,} {self.unit} "
                f"({self.rejects:,} rejected), {self.rate:.1f} {self.unit}/s processed, "
                f"elapsed {_duration(self.elapsed)}, ETA {_duration(eta) if eta is not None else '?'}")


def format_summary(summary: dict) -> str:
    """The one-screen summary printed at the end of a job (the same facts as summary.json)."""
    t, run = summary["totals"], summary["this_run"]
    unit = summary.get("unit", "records")
    sh = summary["shards"]
    balance = "yes" if t["balanced"] else "NO"
    lines = [
        f"{summary['job']}: {summary['status']}",
        f"  input     {summary['input']}",
        f"  output    {summary['output']}  (rows/, rejects/, stats/, summary.json)",
        f"  shards    {sh['done']}/{sh['total']} done, {sh['processed_this_run']} this run, "
        f"{sh['skipped_already_done']} already done, {sh['failed']} failed"
        + (f", {len(summary['changed_redone'])} changed since done and redone" if summary.get("changed_redone")
           else ""),
        f"  records   {t['records']:,} in = {t['rows']:,} rows + {t['rejects']:,} rejects  (balanced: {balance})",
        f"  this run  {run['records']:,} records in {_duration(run['seconds'])}, "
        f"{run.get('processed', run['records']):,} {unit} processed: "
        f"{run.get('processed_per_s', run['records_per_s']):.2f} {unit}/s",
    ]
    if summary.get("processor", {}).get("batch_occupancy") is not None:
        lines.append(f"  batch     occupancy {summary['processor']['batch_occupancy']:.1%} (occupied slots / slots)")
    if summary.get("reject_reasons"):
        reasons = {k: n for k, n in summary["reject_reasons"].items() if k != "(more kinds)"}
        top = sorted(reasons.items(), key=lambda kv: -kv[1])[:5]
        kinds = summary.get("reject_kinds", len(reasons))
        more = f"; and {kinds - len(top)} more kinds (summary.json)" if kinds > len(top) else ""
        lines.append("  rejects   " + "; ".join(f"{n} x {reason}" for reason, n in top) + more)
    for f in summary.get("failed_shards", [])[:5]:
        lines.append(f"  FAILED    {f['shard']}: {f['error']}")
    if len(summary.get("failed_shards", [])) > 5:
        lines.append(f"  ... and {len(summary['failed_shards']) - 5} more failed shards (see summary.json)")
    return "\n".join(lines)
