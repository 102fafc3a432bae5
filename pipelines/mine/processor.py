"""The mining processor: one CLIP per actor, a seed per key, and continuous batching over a shard's images:
``pez_core.invert_stream`` with ``batch_size`` slots, each slot refilled with the shard's next image as
soon as its target stops (the default plateau rule), so the batch stays full.

Rows file schema (rows/<shard>.parquet): key string, shard string, caption string (null if none),
prompt string, token_ids list<int32>, cosine float32, model string, steps int32 (steps run),
best_step int32, seconds float32 (the shard's wall seconds, decoding included, shared among its
rows in proportion to their steps: the rows of a shard sum to its time).
Per shard, :meth:`PEZProcessor.shard_stats` gives the batch's occupancy counts for the stats marker.
"""

from __future__ import annotations

import time
import zlib


def row_schema():
    import pyarrow as pa

    return pa.schema([
        ("key", pa.string()), ("shard", pa.string()), ("caption", pa.string()), ("prompt", pa.string()),
        ("token_ids", pa.list_(pa.int32())), ("cosine", pa.float32()), ("model", pa.string()),
        ("steps", pa.int32()), ("best_step", pa.int32()), ("seconds", pa.float32()),
    ])


def key_seed(key: str, seed: int = 0) -> int:
    """The PEZ seed of one record: a function of its key only, so batching and reruns do not change it."""
    return zlib.crc32(f"{seed}:{key}".encode())


class PEZProcessor:
    """Loads one CLIP and its vocabulary; mines a prompt per record in batches of ``batch_size``."""

    def __init__(self, model: str, pretrained: str | None, pez: dict, batch_size: int, threads: int = 0,
                 device: str | None = None):
        import torch

        from pez_core import PEZConfig, Vocabulary, load_clip

        if threads:
            torch.set_num_threads(threads)
        self.cfg = PEZConfig(**pez)
        self.clip = load_clip(model, pretrained=pretrained, device=device)
        self.vocab = Vocabulary.from_config(self.clip, self.cfg)
        self.batch_size = batch_size
        self._stats: dict[str, dict] = {}

    def __call__(self, shard_id: str, records: list[dict]) -> tuple[list[dict], list[dict]]:
        from pez_core import Target, invert_stream

        start = time.monotonic()
        rejects: list[dict] = []
        queued: list[dict] = []  # the records behind the stream's targets, by index

        def targets():  # decoded and encoded a batch at a time, as slots need them
            for i in range(0, len(records), self.batch_size):
                ok, images, bad = self._decode(shard_id, records[i: i + self.batch_size])
                rejects.extend(bad)
                if not ok:
                    continue
                ok, feats, bad = self._encode(ok, images)
                rejects.extend(bad)
                for j, rec in enumerate(ok):
                    queued.append(rec)
                    yield Target(feats[j: j + 1], "image", key_seed(rec["key"], self.cfg.seed))

        stream = invert_stream(self.clip, targets(), self.cfg, slots=self.batch_size, vocab=self.vocab)
        results = sorted(stream, key=lambda ir: ir[0])
        self._stats[shard_id] = {"slot_steps": stream.slot_steps,
                                 "slot_capacity": stream.global_steps * self.batch_size}
        seconds = time.monotonic() - start
        total_steps = sum(r.steps_run for _, r in results) or 1
        rows = [{"key": rec["key"], "shard": shard_id, "caption": rec.get("caption"), "prompt": res.text,
                 "token_ids": res.token_ids, "cosine": res.cosine, "model": self.clip.name, "steps": res.steps_run,
                 "best_step": res.best_step, "seconds": seconds * res.steps_run / total_steps}
                for rec, (_, res) in zip(queued, results)]
        return rows, rejects

    def shard_stats(self, shard_id: str) -> dict:
        """Counts for the shard's stats marker: ``slot_steps`` (occupied slots summed over batch steps)
        and ``slot_capacity`` (batch steps x slots); their ratio is the batch's mean occupancy."""
        return self._stats.pop(shard_id, {})

    def _decode(self, shard_id, records):
        from pez_core import ImageError

        from pipelines.io.shards import decode_record

        ok, images, rejects = [], [], []
        for rec in records:
            try:
                images.append(decode_record(rec, shard_id))
                ok.append(rec)
            except ImageError as e:
                rejects.append({"key": rec["key"], "reason": e.reason})
        return ok, images, rejects

    def _encode(self, records, images):
        """Image features (b, e); a record whose image fails to encode is isolated and rejected."""
        import torch

        try:
            return records, self.clip.encode_images(images), []
        except Exception:  # noqa: BLE001 -- find the culprit(s) one by one
            keep, feats, rejects = [], [], []
            for rec, im in zip(records, images):
                try:
                    feats.append(self.clip.encode_images([im]))
                    keep.append(rec)
                except Exception as e:  # noqa: BLE001
                    rejects.append({"key": rec["key"], "reason": f"cannot encode image ({type(e).__name__}: {e})"})
            return keep, (torch.cat(feats) if feats else None), rejects
