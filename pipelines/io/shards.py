"""Image inputs as people already have them, one shard = one unit of work and of resume.

Formats (as img2dataset writes them):
- WebDataset ``.tar`` shards: members grouped by key (``dir/key.ext``; the key is the name up to its
  first dot), an image member (jpg, png, webp, ...) plus optional ``txt`` caption and ``json`` metadata.
  img2dataset's ``<shard>.parquet`` metadata file beside a tar is not a shard.
- Parquet shards with an image-bytes column (``jpg``/``png``/``webp``/``image``/``image_bytes``/``bytes``,
  or a struct with a ``bytes`` field as Hugging Face datasets store images), ``key`` and ``caption``.
- Plain folders of images: every folder holding image files is one shard; ``key.txt`` beside
  ``key.jpg`` is its caption.

A record is a dict ``{"key", "caption", "image", "error"}``: ``image`` the encoded bytes (or None),
``error`` a reason when the record cannot be used at all (no image member, duplicate key).
:func:`decode_record` decodes one record through pez_core's ``decode_image`` and raises ImageError
with the reason, so a caller turns a bad record into a reject and goes on.
"""

from __future__ import annotations

import json
import logging
import posixpath
import tarfile
from dataclasses import dataclass
from typing import Iterator

from pipelines.io.storage import Location

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
IMAGE_COLUMNS = ("jpg", "png", "webp", "jpeg", "image", "image_bytes", "bytes")
FORMATS = ("auto", "webdataset", "parquet", "folder")


class ShardError(ValueError):
    """A whole shard cannot be read (missing, not a tar, no image column): the shard fails, not a row."""


@dataclass(frozen=True)
class Shard:
    id: str  # stable name, relative to the input root without extension ("part1/00003"); names outputs
    uri: str  # the tar/parquet file, or the folder of images
    format: str  # webdataset | parquet | folder
    size: int = 0  # bytes (for progress estimates; with mtime, recorded in the done marker)
    mtime: int = 0  # modification time in ns as the store lists it (folders: the newest file); 0 = unknown


# ---- discovery -------------------------------------------------------------------------------
def _ext(name: str) -> str:
    base = posixpath.basename(name)
    return base.split(".", 1)[1].lower() if "." in base else ""


def _strip(name: str) -> str:
    for suffix in (".tar.gz", ".tgz", ".tar", ".parquet"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def find_shards(root: Location, fmt: str = "auto") -> list[Shard]:
    """The shards under ``root`` (a folder or prefix, or one shard file), sorted by id."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown input format {fmt!r}; choose from {', '.join(FORMATS)}")
    root, files = root.input_files()  # a folder/prefix, or one file
    if not files:
        raise ShardError(f"{root.uri}: no such file or folder, or it is empty")
    tars, parquets, image_dirs, image_mtimes = {}, {}, {}, {}
    for loc, size, mtime in files:
        rel = loc.relative_to(root)
        base = posixpath.basename(rel)
        if base.startswith((".", "_")):
            continue
        ext = _ext(base)
        if ext in ("tar", "tar.gz", "tgz") and fmt in ("auto", "webdataset"):
            tars[_strip(rel)] = Shard(_strip(rel), loc.uri, "webdataset", size, mtime)
        elif ext == "parquet" and fmt in ("auto", "parquet"):
            parquets[_strip(rel)] = Shard(_strip(rel), loc.uri, "parquet", size, mtime)
        elif ext.rsplit(".", 1)[-1] in IMAGE_EXTS and fmt in ("auto", "folder"):
            folder = posixpath.dirname(rel)
            image_dirs.setdefault(folder, 0)
            image_dirs[folder] += size
            image_mtimes[folder] = max(image_mtimes.get(folder, 0), mtime)
    shards = dict(tars)
    for sid, shard in parquets.items():  # img2dataset writes metadata <shard>.parquet beside <shard>.tar
        if sid not in tars:
            shards[sid] = shard
    for folder, size in image_dirs.items():
        sid = folder or (root.name or "images")
        if sid in shards:
            raise ShardError(f"{root.uri}: folder shard {sid!r} collides with a file shard of the same name")
        shards[sid] = Shard(sid, root.child(folder).uri if folder else root.uri, "folder", size, image_mtimes[folder])
    if not shards:
        raise ShardError(f"{root.uri}: no WebDataset tars, Parquet files or images found (format {fmt})")
    return [shards[k] for k in sorted(shards)]


# ---- reading ---------------------------------------------------------------------------------
def _record(key: str, members: dict[str, bytes]) -> dict:
    """A record from a key's members (extension -> bytes)."""
    image_ext = next((e for e in members if e.rsplit(".", 1)[-1] in IMAGE_EXTS), None)
    caption = None
    if "txt" in members:
        caption = members["txt"].decode("utf-8", errors="replace").strip()
    elif "json" in members:
        try:
            caption = json.loads(members["json"]).get("caption")
        except (ValueError, AttributeError):
            caption = None
    if image_ext is None:
        have = ", ".join(sorted(members)) or "nothing"
        return {"key": key, "caption": caption, "image": None, "error": f"no image member (has: {have})"}
    return {"key": key, "caption": caption, "image": members[image_ext], "error": None}


def _split_member(name: str) -> tuple[str, str]:
    folder, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(folder, stem) if folder else stem, ext.lower()


def _read_tar(shard: Shard, loc: Location) -> Iterator[dict]:
    """Stream a tar: WebDataset groups consecutive members with the same key."""
    key, members = None, {}
    try:
        with loc.open_input_stream() as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                k, ext = _split_member(info.name)
                if not ext or posixpath.basename(k).startswith("."):
                    continue
                data = tar.extractfile(info).read()
                if k != key:
                    if key is not None:
                        yield _record(key, members)
                    key, members = k, {}
                members[ext] = data
    except (tarfile.TarError, EOFError) as e:
        raise ShardError(f"{shard.uri}: not a readable tar ({e})") from e
    if key is not None:
        yield _record(key, members)


def _image_column(schema, shard: Shard, column: str | None) -> str:
    import pyarrow as pa

    names = schema.names
    if column is not None:
        if column not in names:
            raise ShardError(f"{shard.uri}: no column {column!r} (columns: {', '.join(names)})")
        return column
    for name in IMAGE_COLUMNS:
        if name in names:
            t = schema.field(name).type
            if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_struct(t):
                return name
    raise ShardError(f"{shard.uri}: no image-bytes column (looked for {', '.join(IMAGE_COLUMNS)}; "
                     f"columns: {', '.join(names)})")


def _read_parquet(shard: Shard, loc: Location, image_column: str | None = None) -> Iterator[dict]:
    """Stream a Parquet shard batch by batch (one file = one shard; files are never merged)."""
    from pipelines.io.parquet import open_parquet

    pf = open_parquet(shard.uri, loc)
    schema = pf.schema_arrow
    img = _image_column(schema, shard, image_column)
    columns = [img] + [c for c in ("key", "caption", "status", "error_message") if c in schema.names]
    index = 0
    for batch in pf.iter_batches(batch_size=256, columns=columns):
        for row in batch.to_pylist():
            key = str(row["key"]) if row.get("key") is not None else f"{shard.id}/{index:09d}"
            index += 1
            data = row[img]
            if isinstance(data, dict):  # Hugging Face Image feature: {"bytes": ..., "path": ...}
                data = data.get("bytes")
            error = None
            if not data:
                status = row.get("status")
                error = "no image bytes" + (f" (status: {status}" + (f", {row['error_message']}" if row.get(
                    "error_message") else "") + ")" if status else "")
            yield {"key": key, "caption": row.get("caption"), "image": data or None, "error": error}


def _read_folder(shard: Shard, loc: Location) -> Iterator[dict]:
    """Files of one folder (not its subfolders) grouped by name up to the first dot."""
    prefix = shard.id
    key, members = None, {}
    for child, _ in loc.list_files(recursive=False):
        base = child.name
        if base.startswith((".", "_")):
            continue
        stem, _, ext = base.partition(".")
        if stem != key:
            if key is not None:
                yield _record(f"{prefix}/{key}", members)
            key, members = stem, {}
        members[ext.lower()] = child.read_bytes()
    if key is not None:
        yield _record(f"{prefix}/{key}", members)


def read_shard(shard: Shard, loc: Location, image_column: str | None = None) -> Iterator[dict]:
    """Records of one shard, each key once: a repeated key becomes a record with an error."""
    if shard.format == "webdataset":
        records = _read_tar(shard, loc)
    elif shard.format == "parquet":
        records = _read_parquet(shard, loc, image_column)
    elif shard.format == "folder":
        records = _read_folder(shard, loc)
    else:
        raise ShardError(f"{shard.uri}: unknown format {shard.format!r}")
    seen = set()
    for rec in records:
        if rec["key"] in seen:  # kept as a reject so rows in = rows out + rejects still holds
            rec = {**rec, "image": None, "error": "duplicate key in shard (first occurrence kept)"}
        seen.add(rec["key"])
        yield rec


def records_by_key(shard: Shard, loc: Location, keys: set[str], image_column: str | None = None) -> dict[str, dict]:
    """The records of ``shard`` whose keys are in ``keys``, by key (finding a table's target images)."""
    return {rec["key"]: rec for rec in read_shard(shard, loc, image_column=image_column) if rec["key"] in keys}


def decode_record(record: dict, shard_id: str = ""):
    """The record's RGB PIL image; raises pez_core's ImageError with the reason for a bad record."""
    from pez_core.images import ImageError, decode_image

    source = f"{shard_id}:{record['key']}" if shard_id else record["key"]
    if record.get("error"):
        raise ImageError(source, record["error"])
    return decode_image(record["image"], source)
