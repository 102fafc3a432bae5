"""``promptmine eval invert``: the PEZ evaluation protocol (paper section 4.1) as a resumable Ray job.

Each mined prompt (and each baseline prompt column: captions, other tools' prompts) -> N seeds of images
from a text-to-image model -> cosine between the reference CLIP's features of each image and of the
row's target image -> the mean over seeds. Targets come from the image shards the prompts were mined
from, joined by shard id and key; every column uses the same seeds, so columns compare pairwise.

Rows (rows/<shard>.parquet): key, shard, prompt, similarity (mean over seeds), similarity_std,
similarities list<float32> (per seed), then for each baseline column B: B (its text), B_similarity,
B_similarity_std, B_similarities; target_image, image and B_image (JPEG thumbnails: the target and the
first seed's image of each column), seconds.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time

from pipelines.evaluate.actor import isolate, quiet_model_loading, thumbnail
from pipelines.io.prompt_tables import read_columns
from pipelines.io.shards import Shard, records_by_key
from pipelines.io.storage import Location

log = logging.getLogger(__name__)


def row_schema(baselines: tuple[str, ...] = ()):
    import pyarrow as pa

    fields = [("key", pa.string()), ("shard", pa.string()), ("prompt", pa.string()),
              ("similarity", pa.float32()), ("similarity_std", pa.float32()), ("similarities", pa.list_(pa.float32()))]
    for b in baselines:
        fields += [(b, pa.string()), (f"{b}_similarity", pa.float32()), (f"{b}_similarity_std", pa.float32()),
                   (f"{b}_similarities", pa.list_(pa.float32()))]
    fields += [("target_image", pa.binary()), ("image", pa.binary())]
    fields += [(f"{b}_image", pa.binary()) for b in baselines]
    fields += [("seconds", pa.float32())]
    return pa.schema(fields)


def schema_for(baselines: tuple[str, ...]):
    return functools.partial(row_schema, tuple(baselines))


def read_mined(shard: Shard, loc: Location, images: dict, prompt_column: str, baselines: list[str],
               image_column: str | None = None):
    """Records of one mined table joined with their target images (same shard id, same key)."""
    records = list(read_columns(shard, loc, [prompt_column], baselines))
    source = images.get(shard.id)
    if source is None:
        for r in records:
            r["error"] = r["error"] or f"no image shard {shard.id!r} in the images input"
        yield from records
        return
    wanted = {r["key"] for r in records if not r["error"]}
    image_shard = Shard(**source)
    found = records_by_key(image_shard, Location(image_shard.uri, loc.options), wanted, image_column)
    for r in records:
        if not r["error"]:
            target = found.get(r["key"])
            if target is None:
                r["error"] = f"no target image with this key in {image_shard.uri}"
            else:
                r["error"], r["image"] = target["error"], target["image"]
        yield r


class InvertEvalProcessor:
    """Loads the generator and the reference CLIP once per actor; scores rows ``batch_rows`` at a time."""

    def __init__(self, generation: dict, reference_clip: str, seeds: list[int], prompt_column: str,
                 baselines: list[str], batch_rows: int = 4, threads: int = 0, device: str | None = None):
        from pez_core.scoring import ClipScorer, GenerationConfig, Generator

        quiet_model_loading(threads)
        self.gen = Generator(GenerationConfig(**generation), device=device)
        self.ref = ClipScorer(reference_clip, device=device)
        self.seeds, self.prompt_column, self.baselines = list(seeds), prompt_column, list(baselines)
        self.batch_rows = batch_rows

    def __call__(self, shard_id: str, records: list[dict]) -> tuple[list[dict], list[dict]]:
        from pez_core.images import ImageError, decode_image

        ok, rows, rejects = [], [], []
        for rec in records:
            try:
                ok.append({**rec, "target": decode_image(rec["image"], f"{shard_id}:{rec['key']}")})
            except ImageError as e:
                rejects.append({"key": rec["key"], "reason": f"target image: {e.reason}"})
        for i in range(0, len(ok), self.batch_rows):
            r, j = isolate(functools.partial(self._score, shard_id), ok[i: i + self.batch_rows], "generate or score")
            rows += r
            rejects += j
        return rows, rejects

    def _score(self, shard_id: str, group: list[dict]) -> tuple[list[dict], list[dict]]:
        start = time.monotonic()
        targets = self.ref.image_features([r["target"] for r in group])  # (g, e)
        columns = [self.prompt_column, *self.baselines]
        jobs = [(i, c) for i, r in enumerate(group) for c in columns if isinstance(r.get(c), str) and r[c].strip()]
        n = len(self.seeds)
        images = self.gen.generate([group[i][c] for i, c in jobs for _ in self.seeds], self.seeds * len(jobs))
        feats = self.ref.image_features(images).view(len(jobs), n, -1)
        sims = (feats * targets[[i for i, _ in jobs]][:, None]).sum(-1)  # (jobs, seeds)
        per_row = (time.monotonic() - start) / len(group)
        rows = []
        for i, rec in enumerate(group):
            row = {"key": rec["key"], "shard": shard_id, "target_image": thumbnail(rec["target"]), "seconds": per_row}
            for b in self.baselines:
                row.update({b: rec.get(b), f"{b}_similarity": None, f"{b}_similarity_std": None,
                            f"{b}_similarities": None, f"{b}_image": None})
            rows.append(row)
        for j, (i, c) in enumerate(jobs):
            name = "prompt" if c == self.prompt_column else c
            s = sims[j]
            stem = "" if name == "prompt" else f"{name}_"
            rows[i].update({name: group[i][c], f"{stem}similarity": float(s.mean()),
                            f"{stem}similarity_std": float(s.std()) if n > 1 else 0.0,
                            f"{stem}similarities": [float(x) for x in s],
                            f"{stem}image": thumbnail(images[j * n])})
        return rows, []


def metrics(df, baselines: list[str]) -> dict:
    """Mean similarity with its 95% CI per column, and prompt-minus-baseline paired differences."""
    from pipelines.evaluate.stats import mean_ci, paired

    out = {"similarity": {"prompt": mean_ci(df["similarity"])}}
    for b in baselines:
        out["similarity"][b] = mean_ci(df[f"{b}_similarity"])
        out.setdefault("prompt_minus", {})[b] = paired(df["similarity"], df[f"{b}_similarity"])
    return out


def image_shards(root: Location, fmt: str = "auto") -> dict:
    """Image shard id -> the Shard as a dict (what the reader needs to find a table's targets)."""
    from pipelines.io.shards import find_shards

    return {s.id: dataclasses.asdict(s) for s in find_shards(root, fmt)}
