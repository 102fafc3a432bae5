"""The images a mining report shows: each row's target image, read back from the input shards by key, and,
where a generator is named, the image its prompt regenerates."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def add_mining_images(out, df, images_uri: str | None = None, generator: str | None = None, seed: int = 0):
    """``df`` (rows of a ``mine`` output at ``out``) with ``target_image`` (JPEG thumbnails of the input
    images) and, with ``generator``, ``image`` (the image of each prompt, seed ``seed``). The input is the
    one in ``_job.json`` unless ``images_uri`` is given; a key not found there keeps a null image."""
    import json

    from pez_core.images import ImageError

    from pipelines.evaluate.actor import thumbnail
    from pipelines.io.shards import decode_record, find_shards, records_by_key

    df = df.copy()
    if images_uri is None:
        manifest = out.child("_job.json")
        images_uri = json.loads(manifest.read_text()).get("input") if manifest.exists() else None
    if images_uri:
        root = out.options.resolve(images_uri)
        wanted = {}
        for shard_id, key in zip(df["shard"], df["key"]):
            wanted.setdefault(shard_id, set()).add(key)
        found = {}
        for shard in find_shards(root):
            if shard.id not in wanted:
                continue
            for key, rec in records_by_key(shard, out.options.resolve(shard.uri), wanted[shard.id]).items():
                try:
                    found[(shard.id, key)] = thumbnail(decode_record(rec, shard.id))
                except ImageError:  # a bad target keeps a null image
                    pass
        df["target_image"] = [found.get((s, k)) for s, k in zip(df["shard"], df["key"])]
        log.info("report: %d of %d target images found in %s", len(found), len(df), images_uri)
    if generator:
        from pez_core.scoring import GenerationConfig, Generator

        gen = Generator(GenerationConfig(model=generator))
        df["image"] = [thumbnail(im) for im in gen.generate(list(df["prompt"]), [seed] * len(df))]
    return df
