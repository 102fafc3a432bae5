"""Summaries people can trust: reject reasons grouped by kind and bounded, cut lists say what was cut,
throughput counts what reached the model. No Ray."""

import io

from pipelines.jobs.progress import Progress, format_summary
from pipelines.jobs.summary import MORE_KINDS, reason_class, top_kinds


def test_reasons_are_grouped_by_kind():
    reasons = [f"duplicate key 'k{i}' in this shard (first at row {i})" for i in range(1000)]
    reasons += ["corrupt or truncated image (broken data stream when reading image file)",
                "unreadable row (CSV line 7 has 3 fields, the header 2)", 'key column "id" is null',
                "prompt has 412 tokens", "prompt has 99 tokens"]
    kinds = {}
    for r in reasons:
        kinds[reason_class(r)] = kinds.get(reason_class(r), 0) + 1
    assert kinds == {"duplicate key '…' in this shard": 1000, "corrupt or truncated image": 1,
                     "unreadable row": 1, "key column '…' is null": 1, "prompt has N tokens": 2}


def test_kinds_and_lists_are_cut_with_a_count():
    counts = {f"kind {chr(97 + i)}": 100 - i for i in range(26)}
    kept = top_kinds(counts, n=20)
    assert len(kept) == 21 and kept[MORE_KINDS] == sum(100 - i for i in range(20, 26))
    summary = {"job": "mine", "status": "complete", "input": "i", "output": "o", "unit": "images",
               "shards": {"total": 1, "done": 1, "failed": 0, "processed_this_run": 1, "skipped_already_done": 0},
               "totals": {"records": 10, "rows": 3, "rejects": 7, "balanced": True},
               "this_run": {"records": 10, "rejects": 7, "processed": 4, "seconds": 2.0, "records_per_s": 5.0,
                            "processed_per_s": 2.0},
               "reject_reasons": kept, "reject_kinds": 26,
               "failed_shards": [{"shard": f"{i:05d}", "error": "x"} for i in range(7)]}
    text = format_summary(summary)
    assert "100 x kind a; 99 x kind b; 98 x kind c; 97 x kind d; 96 x kind e; and 21 more kinds" in text
    assert "... and 2 more failed shards" in text
    assert "10 records in 0:00:02, 4 images processed: 2.00 images/s" in text


def test_throughput_counts_records_that_reached_the_model():
    p = Progress("mine", total_shards=2, interval=1e9, unit="images", stream=io.StringIO())
    p.started -= 10
    p.update(records=100, rejects=60, size=0, processed=50)  # 50 unreadable: never reached the model
    assert round(p.rate, 1) == 5.0 and round(p.records_rate, 1) == 10.0
    assert "100 images (60 rejected), 5.0 images/s processed" in p.line()
