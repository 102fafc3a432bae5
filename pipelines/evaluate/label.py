"""``promptmine label``: reward-model labels, pick_score and aesthetic_score of each pair's prompt over N seeds.

For each (raw_prompt, prompt) pair: images from ``prompt`` over the seeds, each judged against the raw
prompt (``--judge raw``, BeautifulPrompt's use of PickScore) or the prompt itself; the means are the
columns ``promptmine train reward`` reads (``--data OUTPUT/rows``).
"""

from __future__ import annotations

import time

from pipelines.evaluate.rewrite import RewriteEvalProcessor


def label_schema():
    import pyarrow as pa

    return pa.schema([("key", pa.string()), ("shard", pa.string()), ("raw_prompt", pa.string()),
                      ("prompt", pa.string()), ("pick_score", pa.float32()), ("aesthetic_score", pa.float32()),
                      ("pick_score_std", pa.float32()), ("aesthetic_score_std", pa.float32()),
                      ("seeds", pa.int32()), ("seconds", pa.float32())])


class LabelProcessor(RewriteEvalProcessor):
    def __init__(self, scorer: dict, raw_column: str, prompt_column: str, judge: str = "raw", batch_rows: int = 4):
        super().__init__(scorer, raw_column, prompt_column, batch_rows)
        self.judge = judge

    def _score(self, shard_id: str, group: list[dict]) -> tuple[list[dict], list[dict]]:
        start = time.monotonic()
        raw = [r[self.raw_column] for r in group]
        new = [r[self.prompt_column] for r in group]
        scores, _ = self.scorer.score(new, raw if self.judge == "raw" else new)
        n = len(self.scorer.seeds)
        per_row = (time.monotonic() - start) / len(group)
        return [{"key": rec["key"], "shard": shard_id, "raw_prompt": raw[i], "prompt": new[i],
                 "pick_score": float(scores["pick_score"][i].mean()),
                 "aesthetic_score": float(scores["aesthetic_score"][i].mean()),
                 "pick_score_std": float(scores["pick_score"][i].std()) if n > 1 else 0.0,
                 "aesthetic_score_std": float(scores["aesthetic_score"][i].std()) if n > 1 else 0.0,
                 "seeds": n, "seconds": per_row} for i, rec in enumerate(group)], []


def label_metrics(df) -> dict:
    from pipelines.evaluate.stats import mean_ci

    return {s: mean_ci(df[s]) for s in ("pick_score", "aesthetic_score")}
