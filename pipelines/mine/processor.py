"""The mining processor: one CLIP per actor, batched ``pez_core.invert`` over a shard's images, a seed per key.

Rows file schema (rows/<shard>.parquet): key string, shard string, caption string (null if none),
prompt string, token_ids list<int32>, cosine float32, model string, steps int32 (steps run),
best_step int32, seconds float32 (wall seconds of the record's batch / batch size).
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

    def __call__(self, shard_id: str, records: list[dict]) -> tuple[list[dict], list[dict]]:
        rows, rejects = [], []
        for i in range(0, len(records), self.batch_size):
            r, j = self.mine_batch(shard_id, records[i: i + self.batch_size])
            rows += r
            rejects += j
        return rows, rejects

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

    def mine_batch(self, shard_id: str, records: list[dict]) -> tuple[list[dict], list[dict]]:
        from pez_core import Target, invert

        start = time.monotonic()
        records, images, rejects = self._decode(shard_id, records)
        if not records:
            return [], rejects
        records, feats, more = self._encode(records, images)
        rejects += more
        if not records:
            return [], rejects
        targets = [Target(feats[i: i + 1], "image", key_seed(r["key"], self.cfg.seed)) for i, r in enumerate(records)]
        results = invert(self.clip, targets, self.cfg, vocab=self.vocab)
        per_row = (time.monotonic() - start) / len(records)
        rows = [{"key": rec["key"], "shard": shard_id, "caption": rec.get("caption"), "prompt": res.text,
                 "token_ids": res.token_ids, "cosine": res.cosine, "model": self.clip.name, "steps": res.steps_run,
                 "best_step": res.best_step, "seconds": per_row} for rec, res in zip(records, results)]
        return rows, rejects
