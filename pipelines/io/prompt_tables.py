"""Prompt tables as people already have them: Parquet, CSV or JSON Lines files with a ``prompt`` column.

One input file = one shard (the unit of work and of resume of a shard job). A promptmine job's output
folder (``mine``, ``rewrite``, ``eval``, ``label``) is a prompt table too: its ``rows/`` files are the
shards, so the shard ids of ``promptmine mine`` output equal those of the image shards it came from. DiffusionDB's
``metadata.parquet`` is such a table (columns ``image_name``, ``prompt``, ``seed``, ...).

Formats, by extension (compressed ``.gz`` / ``.bz2`` / ``.zst`` files are decompressed on the fly):
- ``.parquet``: typed columns; a file pyarrow cannot open, or without the prompt / key column, fails
  as a whole shard (ShardError): no row of it can be trusted.
- ``.csv`` (header line, RFC 4180 quoting, read with the standard library's csv module) and
  ``.jsonl`` / ``.ndjson`` (one JSON object per line; blank lines are not records): a row that cannot
  be read (bad JSON, not an object, wrong number of fields, not UTF-8) becomes a record with an
  ``error``, so the job rejects that row and does the rest.

Big Parquet files (DiffusionDB's 2M-row ``metadata.parquet`` is one file) can be split into several
shards of whole row groups with ``rows_per_shard``: shard ``<file>@00003`` is the 4th run of row groups
of ``<file>`` (its URI carries ``#rg=A-B&row=N``: row groups A..B-1, whose first row is row N of the file).
Keys do not depend on the split: the default key is still ``<file>:<row index in the file>``.

A record is ``{"key", "prompt", "error"}``. The key is the key column's value when ``key_column`` is
given, else ``<shard>:<row index>`` (0-based over the file's data rows, unreadable ones included, so
keys do not move when a row is repaired). A row without its own key (null key, unreadable row, or a
key repeated in the shard) is keyed ``<file>:<row index>``, so every key of a job's output is unique;
keys repeated *across* shards are not detected.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import posixpath
from typing import Iterator

from pipelines.io.parquet import open_parquet
from pipelines.io.shards import Shard, ShardError
from pipelines.io.storage import Location

log = logging.getLogger(__name__)

FORMATS = ("auto", "parquet", "csv", "jsonl")
_EXTS = {"parquet": "parquet", "csv": "csv", "jsonl": "jsonl", "ndjson": "jsonl"}
_COMPRESSION = (".gz", ".bz2", ".zst", ".lz4")
_BATCH_ROWS = 4096  # Parquet rows decoded at a time


def table_format(name: str) -> tuple[str, str] | None:
    """``("csv", "part-0")`` for ``part-0.csv.gz``; None for files that are not prompt tables."""
    stem = name
    for suffix in _COMPRESSION:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    base, dot, ext = stem.rpartition(".")
    if not dot or ext.lower() not in _EXTS:
        return None
    return _EXTS[ext.lower()], base


def find_tables(root: Location, fmt: str = "auto", rows_per_shard: int = 0) -> list[Shard]:
    """The prompt-table files under ``root`` (a folder or prefix, or one file), one shard each, by id;
    with ``rows_per_shard`` > 0, Parquet files are split into shards of whole row groups of about
    that many rows (one footer read per file)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown input format {fmt!r}; choose from {', '.join(FORMATS)}")
    if rows_per_shard < 0:
        raise ValueError(f"rows_per_shard must be >= 0 (0: one shard per file), got {rows_per_shard}")
    root, files = root.input_files()  # a folder/prefix, or one file
    if not files:
        raise ShardError(f"{root.uri}: no such file or folder, or it is empty")
    rels = [(loc, (size, mtime), loc.relative_to(root)) for loc, size, mtime in files]
    if any(rel.startswith("rows/") for _, _, rel in rels):  # a promptmine job's output: its rows are the table
        done = None
        if any(rel == "_job.json" for _, _, rel in rels):  # only its shards with a done marker
            from pipelines.jobs.markers import done_data_files

            done = {loc.path for loc in done_data_files(root, "rows").values()}
        rels = [(loc, size, rel[len("rows/"):]) for loc, size, rel in rels
                if rel.startswith("rows/") and (done is None or loc.path in done)]
    shards = {}
    for loc, size, rel in rels:
        if any(part.startswith((".", "_")) for part in rel.split("/")):  # _SUCCESS, .crc, hidden files
            continue
        found = table_format(rel)
        if found is None or fmt not in ("auto", found[0]):
            continue
        kind, sid = found
        if sid in shards:
            raise ShardError(f"{root.uri}: two tables share the shard name {sid!r} "
                             f"({posixpath.basename(shards[sid].uri)} and {loc.name})")
        shards[sid] = Shard(sid, loc.uri, kind, *size)  # size, mtime
    if not shards:
        raise ShardError(f"{root.uri}: no Parquet, CSV or JSON Lines files found (format {fmt})")
    found = [shards[k] for k in sorted(shards)]
    if not rows_per_shard:
        return found
    from concurrent.futures import ThreadPoolExecutor

    def split(shard: Shard) -> list[Shard]:
        if shard.format != "parquet":
            return [shard]
        return _row_group_parts(shard, root.options.resolve(shard.uri), rows_per_shard)

    with ThreadPoolExecutor(max_workers=16) as pool:  # footers read in parallel: object stores are slow per call
        return [part for parts in pool.map(split, found) for part in parts]


def _row_group_parts(shard: Shard, loc: Location, rows_per_shard: int) -> list[Shard]:
    """``shard`` cut into runs of whole row groups of >= rows_per_shard rows (the last may be smaller)."""
    try:
        meta = open_parquet(shard.uri, loc).metadata
    except ShardError:  # left whole: reading it fails the shard alone, with the reason
        return [shard]
    runs, start, rows, first = [], 0, 0, 0
    for g in range(meta.num_row_groups):
        rows += meta.row_group(g).num_rows
        if rows - first >= rows_per_shard or g == meta.num_row_groups - 1:
            group = meta.row_group
            size = sum(group(i).column(c).total_compressed_size for i in range(start, g + 1)
                       for c in range(meta.num_columns))
            runs.append((start, g + 1, first, size))
            start, first = g + 1, rows
    if len(runs) <= 1:
        return [shard]
    return [Shard(f"{shard.id}@{k:05d}", f"{shard.uri}#rg={a}-{b}&row={row}", "parquet", size, shard.mtime)
            for k, (a, b, row, size) in enumerate(runs)]


def _part(shard: Shard, loc: Location) -> tuple[str, Location, list[int] | None, int]:
    """(file id, file location, row groups or None for all, index of the first row) of a shard."""
    if "#rg=" not in shard.uri:
        return shard.id, loc, None, 0
    uri, _, fragment = shard.uri.rpartition("#")
    fields = dict(item.split("=", 1) for item in fragment.split("&"))
    a, b = (int(x) for x in fields["rg"].split("-"))
    return shard.id.rsplit("@", 1)[0], loc.options.resolve(uri), list(range(a, b)), int(fields["row"])


# ---- reading ---------------------------------------------------------------------------------
def read_table(shard: Shard, loc: Location, prompt_column: str = "prompt",
               key_column: str | None = None) -> Iterator[dict]:
    """Records of one table file; see the module docstring for keys and unreadable rows."""
    readers = {"parquet": _read_parquet, "csv": _read_csv, "jsonl": _read_jsonl}
    if shard.format not in readers:
        raise ShardError(f"{shard.uri}: unknown table format {shard.format!r}")
    file_id, loc, row_groups, first = _part(shard, loc)
    kwargs = {"row_groups": row_groups} if row_groups is not None else {}
    seen: dict[str, int] = {}
    for index, (key, prompt, error) in enumerate(readers[shard.format](shard, loc, prompt_column, key_column,
                                                                       **kwargs), start=first):
        own = f"{file_id}:{index}"
        if key_column is not None and not error:
            if key is None or (isinstance(key, float) and key != key):
                key, error = None, f"key column {key_column!r} is null"
            elif str(key) in seen:
                error = f"duplicate key {str(key)!r} in this shard (first at row {seen[str(key)]})"
                key = None
            else:
                key = str(key)
                seen[key] = index
        yield {"key": key if key_column is not None and key is not None else own, "prompt": prompt, "error": error}


def _missing(shard: Shard, column: str, names: list[str], what: str) -> ShardError:
    return ShardError(f"{shard.uri}: no {what} column {column!r} (columns: {', '.join(map(str, names))})")


def _read_parquet(shard, loc, prompt_column, key_column, row_groups=None):
    pf = open_parquet(shard.uri, loc)
    names = pf.schema_arrow.names
    for column, what in ((prompt_column, "prompt"), (key_column, "key")):
        if column is not None and column not in names:
            raise _missing(shard, column, names, what)
    columns = [prompt_column] + ([key_column] if key_column not in (None, prompt_column) else [])
    try:
        for batch in pf.iter_batches(batch_size=_BATCH_ROWS, columns=columns, row_groups=row_groups):
            cols = batch.to_pydict()
            keys = cols[key_column] if key_column is not None else [None] * batch.num_rows
            for prompt, key in zip(cols[prompt_column], keys):
                yield key, prompt, None
    except Exception as e:  # noqa: BLE001 -- a corrupt page fails the shard (no marker: a rerun retries)
        raise ShardError(f"{shard.uri}: cannot read Parquet data ({type(e).__name__}: {e})") from e


def _valid_utf8(values) -> bool:
    try:
        for v in values:
            if isinstance(v, str):
                v.encode("utf-8")
        return True
    except UnicodeEncodeError:  # lone surrogates from errors="surrogateescape": bytes that were not UTF-8
        return False


def _read_csv(shard, loc, prompt_column, key_column):
    with loc.open_input_stream() as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")
        reader = csv.reader(text)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise ShardError(f"{shard.uri}: unreadable CSV header ({e})") from e
        for column, what in ((prompt_column, "prompt"), (key_column, "key")):
            if column is not None and column not in header:
                raise _missing(shard, column, header, what)
        p_at = header.index(prompt_column)
        k_at = header.index(key_column) if key_column is not None else None
        while True:
            line = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                yield None, None, f"unreadable row (CSV line {line}: {e})"
                continue
            if not fields:  # a blank line is not a row
                continue
            if len(fields) != len(header):
                yield None, None, (f"unreadable row (CSV line {line} has {len(fields)} fields, "
                                   f"the header {len(header)})")
            elif not _valid_utf8(fields):
                yield None, None, f"unreadable row (CSV line {line} is not valid UTF-8)"
            else:
                yield (fields[k_at] if k_at is not None else None), fields[p_at], None


def _read_jsonl(shard, loc, prompt_column, key_column):
    with loc.open_input_stream() as raw:
        for number, line in enumerate(io.BufferedReader(raw), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError:
                yield None, None, f"unreadable row (line {number} is not valid UTF-8)"
                continue
            except ValueError as e:
                yield None, None, f"unreadable row (line {number} is not valid JSON: {e})"
                continue
            if not isinstance(obj, dict):
                yield None, None, f"unreadable row (line {number} is a JSON {type(obj).__name__}, not an object)"
            elif prompt_column not in obj:
                yield None, None, f"unreadable row (line {number} has no {prompt_column!r} field)"
            elif not _valid_utf8([obj[prompt_column], obj.get(key_column) if key_column is not None else None]):
                # a "\ud800" escape decodes to a lone surrogate, which no Parquet file can hold
                yield None, None, f"unreadable row (line {number} holds a lone surrogate, not valid Unicode)"
            else:
                yield (obj.get(key_column) if key_column is not None else None), obj[prompt_column], None


def read_columns(shard: Shard, loc: Location, text_columns: list[str],
                 optional_columns: list[str] = ()) -> Iterator[dict]:
    """Records ``{"key", <columns>, "error"}`` of a Parquet table with several text columns (a job's rows:
    the evaluation jobs read prompts and baselines side by side); the key is the ``key`` column's value,
    else ``<file>:<row index>`` as above (a shard of row groups reads only those); a null or empty required
    text or a repeated key becomes the record's error."""
    file_id, loc, row_groups, index = _part(shard, loc)
    pf = open_parquet(shard.uri, loc)
    names = pf.schema_arrow.names
    missing = [c for c in text_columns if c not in names]
    if missing:
        raise ShardError(f"{shard.uri}: no column(s) {', '.join(missing)} (columns: {', '.join(names)})")
    columns = list(dict.fromkeys([*text_columns, *[c for c in optional_columns if c in names]]))
    columns += ["key"] if "key" in names else []
    seen = set()
    for batch in pf.iter_batches(batch_size=1024, columns=columns, row_groups=row_groups):
        for row in batch.to_pylist():
            key = str(row["key"]) if row.get("key") is not None else f"{file_id}:{index}"
            index += 1
            empty = [c for c in text_columns if not isinstance(row.get(c), str) or not row[c].strip()]
            error = f"empty {empty[0]}" if empty else None
            if key in seen:
                error = "duplicate key in shard (first occurrence kept)"
            seen.add(key)
            yield {**{c: row.get(c) for c in columns}, "key": key, "error": error}
