"""Parquet as every reader here opens it: a shard file with one clear error, its column names, a whole table.

Image shards (shards.py), prompt tables (prompt_tables.py) and the training jobs (train/loops.py) all read
Parquet through these three functions, so a file pyarrow cannot open is the same ``ShardError`` everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipelines.io.storage import Location, StorageOptions


def open_parquet(uri: str, loc: Location):
    """``pyarrow.parquet.ParquetFile`` of ``loc``; a file that is not Parquet is a ShardError naming ``uri``."""
    import pyarrow.parquet as pq

    from pipelines.io.shards import ShardError

    try:
        return pq.ParquetFile(loc.open_input_file())
    except ShardError:
        raise
    except Exception as e:  # noqa: BLE001 -- pyarrow raises several types for a bad file
        raise ShardError(f"{uri}: not a readable Parquet file ({e})") from e


def column_names(uri: str, loc: Location) -> list[str]:
    """The columns of one Parquet file (the driver checks flags against them before starting Ray)."""
    return open_parquet(uri, loc).schema_arrow.names


def read_frame(uri: str | Sequence[str], options: StorageOptions, columns=None):
    """The Parquet table at ``uri`` (a file or a folder of files; local or s3://) as pandas; for several
    URIs their rows one after the other (a column one table lacks is missing in its rows)."""
    import pandas as pd
    import pyarrow.dataset as pads

    if not isinstance(uri, str):
        return pd.concat([read_frame(u, options, columns) for u in uri], ignore_index=True)
    loc = options.resolve(uri)
    return pads.dataset(loc.path, filesystem=loc.fs, format="parquet").to_table(columns=columns).to_pandas()
