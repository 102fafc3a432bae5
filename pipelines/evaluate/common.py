"""What the evaluation and labelling jobs share: prompt tables as shards, model loading in actors,
thumbnails, statistics, and the command-line flags for generation, scorers and Ray.

A prompt table is Parquet: one file = one shard (id = its path without ``.parquet``). A job output
folder (``mine``, ``eval``, ``label``) is accepted as input: its ``rows/`` files are the shards, so the
shard ids of ``promptmine mine`` output equal those of the image shards it came from.
"""

from __future__ import annotations

import io
import logging
import math
import posixpath
from typing import Callable, Iterator

from pipelines.io.shards import Shard, ShardError
from pipelines.io.storage import Location

log = logging.getLogger(__name__)

THUMB_PIXELS = 160  # longest side of the JPEG thumbnails kept in rows for the report


# ---- prompt tables as shards ------------------------------------------------------------------
def find_tables(root: Location, fmt: str = "auto") -> list[Shard]:
    """Parquet files under ``root`` (or ``root/rows`` of a job output, or ``root`` itself), sorted by id."""
    if fmt not in ("auto", "parquet"):
        raise ValueError(f"prompt tables are Parquet; --format {fmt!r} is not supported here")
    if root.uri.endswith(".parquet") and root.exists() and not root.is_dir():  # one table file
        return [Shard(posixpath.basename(root.uri)[: -len(".parquet")], root.uri, "parquet", 0)]
    files = root.list_files()
    if not files:
        raise ShardError(f"{root.uri}: no such file or folder, or it is empty")
    rels = [(loc, size, loc.relative_to(root)) for loc, size in files]
    if any(rel.startswith("rows/") for _, _, rel in rels):  # a job output folder: its rows are the table
        rels = [(loc, size, rel[len("rows/"):]) for loc, size, rel in rels if rel.startswith("rows/")]
    shards = [Shard(rel[: -len(".parquet")], loc.uri, "parquet", size) for loc, size, rel in rels
              if rel.endswith(".parquet") and not posixpath.basename(rel).startswith((".", "_"))]
    if not shards:
        raise ShardError(f"{root.uri}: no Parquet files found (prompt tables must be Parquet)")
    return sorted(shards, key=lambda s: s.id)


def table_columns(shards: list[Shard], root: Location) -> list[str]:
    """Column names of the first table (the driver checks flags against them before starting Ray)."""
    import pyarrow.parquet as pq

    loc = Location(shards[0].uri, root.options)
    try:
        return pq.read_schema(loc.open_input_file()).names
    except Exception as e:  # noqa: BLE001 -- pyarrow raises several types for a bad file
        raise ShardError(f"{shards[0].uri}: not a readable Parquet file ({e})") from e


def read_table(shard: Shard, loc: Location, text_columns: list[str],
               optional_columns: list[str] = ()) -> Iterator[dict]:
    """Records ``{"key", <columns>, "error"}``; the key is the key column's value, else ``<shard>:<row index>``
    (as prompt_tables.py); a null or empty required text or a repeated key becomes the record's error."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(loc.open_input_file())
    except Exception as e:  # noqa: BLE001
        raise ShardError(f"{shard.uri}: not a readable Parquet file ({e})") from e
    names = pf.schema_arrow.names
    missing = [c for c in text_columns if c not in names]
    if missing:
        raise ShardError(f"{shard.uri}: no column(s) {', '.join(missing)} (columns: {', '.join(names)})")
    columns = list(dict.fromkeys([*text_columns, *[c for c in optional_columns if c in names]]))
    columns += ["key"] if "key" in names else []
    index, seen = 0, set()
    for batch in pf.iter_batches(batch_size=1024, columns=columns):
        for row in batch.to_pylist():
            key = str(row["key"]) if row.get("key") is not None else f"{shard.id}:{index}"  # as prompt_tables.py
            index += 1
            empty = [c for c in text_columns if not isinstance(row.get(c), str) or not row[c].strip()]
            error = f"empty {empty[0]}" if empty else None
            if key in seen:
                error = "duplicate key in shard (first occurrence kept)"
            seen.add(key)
            yield {**{c: row.get(c) for c in columns}, "key": key, "error": error}


# ---- in actors ----------------------------------------------------------------------------------
def quiet_model_loading(threads: int) -> None:
    """Per actor: torch threads, and no per-load progress bars from diffusers/transformers in job logs."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    try:
        import diffusers.utils.logging as dl
        import transformers.utils.logging as tl

        dl.disable_progress_bar()
        tl.disable_progress_bar()
        dl.set_verbosity_error()
    except ImportError:  # pragma: no cover -- both are dependencies
        pass


def thumbnail(image, pixels: int = THUMB_PIXELS) -> bytes:
    """A small JPEG of a PIL image (what the report shows)."""
    im = image.copy()
    im.thumbnail((pixels, pixels))
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def isolate(run: Callable[[list], tuple[list, list]], records: list[dict], what: str) -> tuple[list, list]:
    """``run(records) -> (rows, rejects)``; if the group raises, run records one by one and reject the
    ones that still fail (so one bad prompt cannot fail a whole shard)."""
    try:
        return run(records)
    except Exception:  # noqa: BLE001 -- find the culprit(s)
        log.warning("a group of %d records failed to %s; retrying one by one", len(records), what, exc_info=True)
    rows, rejects = [], []
    for rec in records:
        try:
            r, j = run([rec])
            rows += r
            rejects += j
        except Exception as e:  # noqa: BLE001
            rejects.append({"key": rec["key"], "reason": f"cannot {what} ({type(e).__name__}: {str(e)[:200]})"})
    return rows, rejects


# ---- statistics ---------------------------------------------------------------------------------
def _t_quantile(df: int) -> float:
    """0.975 quantile of Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def mean_ci(values) -> dict:
    """Mean, standard deviation and the 95% t-interval of the mean over finite values."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci95": None}
    mean = sum(xs) / n
    if n == 1:
        return {"n": 1, "mean": mean, "std": None, "ci95": None}
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = _t_quantile(n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci95": [mean - half, mean + half]}


def paired(a, b) -> dict:
    """mean_ci of a - b over rows where both are finite, plus how often a > b (win rate)."""
    pairs = [(float(x), float(y)) for x, y in zip(a, b) if x is not None and y is not None
             and math.isfinite(float(x)) and math.isfinite(float(y))]
    out = mean_ci([x - y for x, y in pairs])
    out["win_rate"] = (sum(x > y for x, y in pairs) / len(pairs)) if pairs else None
    return out


def format_ci(stat: dict, digits: int = 4) -> str:
    if not stat or stat["mean"] is None:
        return "n/a"
    if stat["ci95"] is None:
        return f"{stat['mean']:.{digits}f} (n={stat['n']})"
    lo, hi = stat["ci95"]
    return f"{stat['mean']:.{digits}f}  [{lo:.{digits}f}, {hi:.{digits}f}]  (n={stat['n']})"


# ---- command line -------------------------------------------------------------------------------
def add_generation_args(p, model: str, steps: int, guidance: float, size: int | None, seeds: int) -> None:
    g = p.add_argument_group("generation (diffusers)")
    g.add_argument("--generator", default=model, metavar="ID_OR_PATH",
                   help=f"text-to-image model id or save_pretrained folder: SD 1.x, SD 2.x or SDXL (default {model})")
    g.add_argument("--steps", type=int, default=steps, help=f"denoising steps (default {steps})")
    g.add_argument("--guidance", type=float, default=guidance, help=f"classifier-free guidance (default {guidance})")
    g.add_argument("--size", type=int, default=size, help="image side in pixels (default: the model's own)")
    g.add_argument("--negative-prompt", help="one negative prompt for every image")
    g.add_argument("--seeds", type=int, default=seeds,
                   help=f"images per prompt, seeds SEED..SEED+N-1 (default {seeds})")
    g.add_argument("--seed", type=int, default=0, help="first seed (the same seeds for every row and column)")
    g.add_argument("--gen-batch-size", type=int, default=4, help="images per diffusion call")
    g.add_argument("--dtype", default="auto", choices=("auto", "fp16", "bf16", "fp32"),
                   help="pipeline dtype (auto: fp16 on GPU, fp32 on CPU)")


def generation_settings(args) -> dict:
    """The GenerationConfig fields from the flags (validated by GenerationConfig itself)."""
    from pez_core.scoring import GenerationConfig

    cfg = GenerationConfig(model=args.generator, steps=args.steps, guidance=args.guidance, size=args.size,
                           negative_prompt=args.negative_prompt, batch_size=args.gen_batch_size, dtype=args.dtype)
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    fields = ("model", "steps", "guidance", "size", "negative_prompt", "batch_size", "dtype")
    return {k: getattr(cfg, k) for k in fields}
