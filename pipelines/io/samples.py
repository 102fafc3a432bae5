"""Sample inputs for the demo, tests and benchmarks: scenes of promptmine's world with their captions
(deterministic per seed) and shards of them in the formats the readers take (WebDataset tars,
img2dataset-style Parquet).

``bad=True`` adds the kinds of bad record a real crawl has: a truncated JPEG, a non-image member named
like an image, and a key with a caption but no image at all.
"""

from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path


def sample_scene(seed: int):
    """The world scene of sample ``seed`` (pez_core.world: one or two objects, a background, a style)."""
    from pez_core.world.grammar import sample_scene as draw

    return draw(random.Random(f"sample:{seed}"))


def make_sample_image(seed: int, size: int = 224):
    """A PIL RGB image of a world scene, the same for the same seed (its caption: :func:`sample_caption`)."""
    from pez_core.world.render import render_scene

    return render_scene(sample_scene(seed), seed, size)


def sample_caption(seed: int) -> str:
    """A caption of sample ``seed``'s scene (one of the world's templates and synonyms)."""
    from pez_core.world.captions import caption

    return caption(sample_scene(seed), random.Random(f"sample-caption:{seed}"))


def write_sample_images(folder: str | Path, count: int, seed: int = 0, size: int = 224) -> list[Path]:
    """Write ``count`` PNG sample images to ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"sample_{i:03d}.png"
        make_sample_image(seed + i, size).save(path)
        paths.append(path)
    return paths


def sample_jpeg(seed: int, size: int = 96) -> bytes:
    buf = io.BytesIO()
    make_sample_image(seed, size).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def sample_records(shard: int, count: int, bad: bool = False, size: int = 96) -> list[dict]:
    """Records ``{"key", "caption", "jpg"}`` (``jpg`` may be None); keys are globally unique."""
    records = [{"key": f"{shard:05d}{i:04d}", "caption": sample_caption(shard * 1000 + i),
                "jpg": sample_jpeg(shard * 1000 + i, size)} for i in range(count)]
    if bad:
        good = sample_jpeg(shard * 1000 + 999, size)
        records += [
            {"key": f"{shard:05d}9997", "caption": "truncated", "jpg": good[: len(good) // 3]},
            {"key": f"{shard:05d}9998", "caption": "not an image", "jpg": b"this is a text file, not a JPEG\n"},
            {"key": f"{shard:05d}9999", "caption": "caption only", "jpg": None},
        ]
    return records


def webdataset_bytes(records: list[dict]) -> bytes:
    """A WebDataset tar: <key>.jpg and <key>.txt members per record (no .jpg when it is None)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for rec in records:
            members = [("txt", rec["caption"].encode())]
            if rec["jpg"] is not None:
                members.insert(0, ("jpg", rec["jpg"]))
            for ext, data in members:
                info = tarfile.TarInfo(f"{rec['key']}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def parquet_bytes(records: list[dict]) -> bytes:
    """An img2dataset-style Parquet shard: key, caption, status, jpg (binary)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        "key": [r["key"] for r in records],
        "caption": [r["caption"] for r in records],
        "status": ["success" if r["jpg"] is not None else "failed_to_download" for r in records],
        "jpg": pa.array([r["jpg"] for r in records], type=pa.binary()),
    })
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def write_sample_shards(folder: str | Path, shards: int = 3, per_shard: int = 8, fmt: str = "webdataset",
                        bad_shard: int | None = 0, size: int = 96) -> list[Path]:
    """Write ``shards`` shards of ``per_shard`` good records to ``folder`` (shard ``bad_shard`` also
    gets the three bad records); returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(shards):
        records = sample_records(s, per_shard, bad=(s == bad_shard), size=size)
        if fmt == "webdataset":
            path, data = folder / f"{s:05d}.tar", webdataset_bytes(records)
        elif fmt == "parquet":
            path, data = folder / f"{s:05d}.parquet", parquet_bytes(records)
        else:
            raise ValueError(f"unknown sample shard format {fmt!r} (webdataset or parquet)")
        path.write_bytes(data)
        paths.append(path)
    return paths
