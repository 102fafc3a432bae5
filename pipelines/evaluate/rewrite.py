"""``promptmine eval rewrite``: BeautifulPrompt's image-based scores of raw vs rewritten prompts.

Both this and ``label`` (label.py, which reuses the scorer here) generate images from prompts and judge each image against the RAW prompt (the user's intent):
PickScore(raw, image), the LAION aesthetic score of the image, and (eval only) the CLIP score
100 * max(cos(raw, image), 0).

- eval rewrite: raw vs rewritten prompt, the same seeds for both; rows hold both sets of scores
  (raw_pick_score / pick_score, ...) and a thumbnail of each; the summary has means with 95% CIs,
  paired differences and the rewritten prompt's win rate.
- label: for each (raw_prompt, prompt) pair, images from ``prompt`` over 8 seeds, pick_score and
  aesthetic_score averaged over them: the columns ``promptmine train reward`` reads
  (``--data OUTPUT/rows``).

Rows file: see :func:`rewrite_schema`.
"""

from __future__ import annotations

import functools
import logging
import time

from pipelines.evaluate.actor import isolate, quiet_model_loading, thumbnail

log = logging.getLogger(__name__)

SCORES = ("pick_score", "aesthetic_score", "clip_score")


def rewrite_schema():
    import pyarrow as pa

    fields = [("key", pa.string()), ("shard", pa.string()), ("raw_prompt", pa.string()), ("prompt", pa.string())]
    for s in SCORES:
        fields += [(f"raw_{s}", pa.float32()), (s, pa.float32())]
    fields += [("raw_image", pa.binary()), ("image", pa.binary()), ("seconds", pa.float32())]
    return pa.schema(fields)


class ImageScorer:
    """Generator + PickScore + aesthetic predictor (+ optional CLIP score), loaded once per actor."""

    def __init__(self, generation: dict, pickscore: str, pickscore_processor: str | None, aesthetic_weights: str,
                 aesthetic_clip: str, clip: str | None, seeds: list[int], threads: int = 0, device: str | None = None):
        from pez_core.scoring import AestheticScorer, ClipScorer, GenerationConfig, Generator
        from pez_core.scoring.pickscore import make_pick_scorer

        quiet_model_loading(threads)
        self.gen = Generator(GenerationConfig(**generation), device=device)
        self.pick = make_pick_scorer(pickscore, pickscore_processor, device=device)  # or a CLIP stand-in
        self.aes = AestheticScorer(aesthetic_weights, clip=aesthetic_clip, device=device)
        self.clip = ClipScorer(clip, device=device) if clip else None
        self.seeds = list(seeds)

    def score(self, prompts: list[str], judges: list[str]) -> tuple[dict, list]:
        """Images of each prompt over the seeds, judged against ``judges`` (same length as prompts).
        Returns ({score name: tensor (rows, seeds)}, the first seed's image of each prompt)."""
        n = len(self.seeds)
        images = self.gen.generate([p for p in prompts for _ in self.seeds], self.seeds * len(prompts))
        texts = [j for j in judges for _ in self.seeds]
        out = {"pick_score": self.pick.score(texts, images).view(-1, n),
               "aesthetic_score": self.aes.score(images).view(-1, n)}
        if self.clip is not None:
            out["clip_score"] = self.clip.clip_score(texts, images).view(-1, n)
        return out, images[::n]


class RewriteEvalProcessor:
    def __init__(self, scorer: dict, raw_column: str, prompt_column: str, batch_rows: int = 4):
        self.scorer = ImageScorer(**scorer)
        self.raw_column, self.prompt_column, self.batch_rows = raw_column, prompt_column, batch_rows

    def __call__(self, shard_id: str, records: list[dict]) -> tuple[list[dict], list[dict]]:
        rows, rejects = [], []
        for i in range(0, len(records), self.batch_rows):
            r, j = isolate(functools.partial(self._score, shard_id), records[i: i + self.batch_rows],
                           "generate or score")
            rows += r
            rejects += j
        return rows, rejects

    def _score(self, shard_id: str, group: list[dict]) -> tuple[list[dict], list[dict]]:
        start = time.monotonic()
        raw = [r[self.raw_column] for r in group]
        new = [r[self.prompt_column] for r in group]
        scores, images = self.scorer.score(raw + new, raw + raw)  # both judged against the raw prompt
        g = len(group)
        per_row = (time.monotonic() - start) / g
        rows = []
        for i, rec in enumerate(group):
            row = {"key": rec["key"], "shard": shard_id, "raw_prompt": raw[i], "prompt": new[i],
                   "raw_image": thumbnail(images[i]), "image": thumbnail(images[g + i]), "seconds": per_row}
            for s in SCORES:
                row[f"raw_{s}"] = float(scores[s][i].mean())
                row[s] = float(scores[s][g + i].mean())
            rows.append(row)
        return rows, []


def rewrite_metrics(df) -> dict:
    from pipelines.evaluate.stats import mean_ci, paired

    out = {}
    for s in SCORES:
        out[s] = {"raw": mean_ci(df[f"raw_{s}"]), "rewritten": mean_ci(df[s]),
                  "rewritten_minus_raw": paired(df[s], df[f"raw_{s}"])}
    return out
