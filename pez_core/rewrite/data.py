"""Pair data for BeautifulPrompt: (raw_prompt, prompt) rows from a table of prompts.

    table = read_prompt_table("diffusiondb/metadata.parquet")     # needs a `prompt` column
    result = build_pairs(table, PairConfig(), summariser=RuleSummariser())
    write_pairs(result.pairs, "pairs.parquet")                     # raw_prompt, prompt, source, scores

Steps (the paper's section 3.1, with our documented rules):
1. Rows flagged by DiffusionDB's own NSFW scores (``prompt_nsfw`` / ``image_nsfw`` columns, when present)
   above ``max_nsfw_score`` are dropped.
2. Every prompt is classified low / mid / high (quality.py). High-quality prompts are deduplicated
   (DiffusionDB repeats a prompt for every seed) and become the ``prompt`` side of pairs.
3. Their ``raw_prompt`` side comes from (a) a summariser (summarise.py: rule-based or an LLM) and/or
   (b) a captioner run on the prompt's image (caption.py: BLIP); ``source`` says which. (c) The paper's
   third source runs the other way: an LLM expander (summarise.LLMExpander) turns each distinct
   low-quality prompt into a high-quality one (``source=expansion``; score columns are left empty, since
   the input's scores belong to the low-quality prompt's image).
   A table that already has ``raw_prompt`` and ``prompt`` columns is taken as pairs (``source=given``).
4. Every pair is cleaned (clean.py: length bounds, non-English, NSFW words, score floors, dedupe);
   dropped rows go to a rejects table with their reason.
Score columns (``pick_score``, ``aesthetic_score``) are carried over when the input has them.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from .clean import CleanConfig, PairCleaner, normalise
from .quality import QualityConfig, classify

log = logging.getLogger(__name__)

SCORE_COLUMNS = ("pick_score", "aesthetic_score")
NSFW_SCORE_COLUMNS = ("prompt_nsfw", "image_nsfw")  # DiffusionDB metadata: 0..1 from its classifiers
PAIR_COLUMNS = ("raw_prompt", "prompt", "source")
_READERS = {".parquet": pd.read_parquet, ".csv": pd.read_csv, ".jsonl": lambda p: pd.read_json(p, lines=True),
            ".json": pd.read_json}


def read_prompt_table(path: str | Path) -> pd.DataFrame:
    """A prompt table from a Parquet / CSV / JSON Lines file, or every such file in a folder (sorted)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in _READERS and p.is_file())
        if not files:
            raise FileNotFoundError(f"{path}: no {', '.join(_READERS)} files in this folder")
        return pd.concat([read_prompt_table(f) for f in files], ignore_index=True)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise ValueError(f"{path}: unknown table format {path.suffix!r}; valid: {', '.join(_READERS)}")
    try:
        return reader(path)
    except Exception as e:  # pyarrow / pandas raise many types for a bad file
        raise ValueError(f"{path}: cannot read as {path.suffix[1:]} ({type(e).__name__}: {e})") from e


@dataclass
class PairConfig:
    prompt_column: str = "prompt"  # column of the input prompts
    summarise: bool = True  # make pairs by summarising high-quality prompts (needs a summariser)
    caption: bool = False  # make pairs by captioning the images of high-quality prompts (needs a captioner)
    expand: bool = False  # make pairs by expanding low-quality prompts with an LLM (needs an expander)
    image_column: str = "image"  # image bytes, or a path (relative to image_root), per row
    image_root: str | None = None  # folder that relative image paths start from
    max_nsfw_score: float | None = 0.5  # drop input rows whose prompt_nsfw / image_nsfw is above (None: off)
    limit: int | None = None  # use at most this many (unique) high-quality prompts
    batch_size: int = 64  # prompts / images per summariser / captioner call
    quality: QualityConfig = field(default_factory=QualityConfig)  # low / high split rules
    clean: CleanConfig = field(default_factory=CleanConfig)  # filters applied to every pair

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.max_nsfw_score is not None and not 0 <= self.max_nsfw_score <= 1:
            raise ValueError(f"max_nsfw_score must be in [0, 1], got {self.max_nsfw_score}")


@dataclass
class PairStats:
    rows_read: int = 0
    quality: Counter = field(default_factory=Counter)  # low / mid / high counts of the input prompts
    high_unique: int = 0  # distinct high-quality prompts used
    candidates: Counter = field(default_factory=Counter)  # pairs made, per source
    pairs: Counter = field(default_factory=Counter)  # pairs kept, per source
    rejected: Counter = field(default_factory=Counter)  # rows dropped, per reason kind

    def as_dict(self) -> dict:
        return {"rows_read": self.rows_read, "quality": dict(self.quality), "high_unique": self.high_unique,
                "candidates": dict(self.candidates), "pairs": dict(self.pairs), "rejected": dict(self.rejected)}


@dataclass
class PairResult:
    pairs: pd.DataFrame  # raw_prompt, prompt, source, and score columns present in the input
    rejects: pd.DataFrame  # raw_prompt, prompt, source, reason
    stats: PairStats


def build_pairs(table: pd.DataFrame, cfg: PairConfig | None = None, *, summariser=None, captioner=None,
                image_loader: Callable | None = None, on_progress: Callable[[str, int], None] | None = None,
                expander=None) -> PairResult:
    """Pairs from ``table`` (see the module docstring). ``on_progress(stage, n)`` reports batches done."""
    cfg = cfg or PairConfig()
    stats = PairStats(rows_read=len(table))
    scores = [c for c in SCORE_COLUMNS if c in table.columns]
    candidates: list[dict] = []
    rejects: list[dict] = []

    def reject(raw, prompt, source, reason):
        rejects.append({"raw_prompt": raw, "prompt": prompt, "source": source, "reason": reason})
        stats.rejected[_kind(reason)] += 1

    table = _drop_flagged(table, cfg, reject)
    if "raw_prompt" in table.columns and cfg.prompt_column in table.columns:
        for row in table.to_dict("records"):
            candidates.append({**_pick(row, scores), "raw_prompt": row["raw_prompt"],
                               "prompt": row[cfg.prompt_column], "source": "given"})
    else:
        if cfg.prompt_column not in table.columns:
            raise ValueError(f"the table has no {cfg.prompt_column!r} column; columns: {list(table.columns)}")
        if not (cfg.summarise and summariser) and not (cfg.caption and captioner) and not (cfg.expand and expander):
            raise ValueError("nothing makes pairs: give a summariser (summarise=True), a captioner "
                             "(caption=True) and/or an expander (expand=True)")
        high, low = _rows_by_quality(table, cfg, stats)
        if cfg.summarise and summariser is not None:
            _summary_pairs(high, cfg, summariser, candidates, reject, on_progress)
        if cfg.caption and captioner is not None:
            _caption_pairs(high, cfg, captioner, image_loader or _image_loader(cfg), candidates, reject,
                           on_progress)
        if cfg.expand and expander is not None:
            _expansion_pairs(low, cfg, expander, candidates, reject, on_progress)
    cleaner = PairCleaner(cfg.clean)
    kept = []
    for c in candidates:
        stats.candidates[c["source"]] += 1
        why = cleaner.reason(c["raw_prompt"], c["prompt"], c.get("pick_score"), c.get("aesthetic_score"))
        if why:
            reject(c["raw_prompt"], c["prompt"], c["source"], why)
        else:
            stats.pairs[c["source"]] += 1
            kept.append({**c, "raw_prompt": c["raw_prompt"].strip(), "prompt": c["prompt"].strip()})
    pairs = pd.DataFrame(kept, columns=[*PAIR_COLUMNS, *scores])
    return PairResult(pairs, pd.DataFrame(rejects, columns=[*PAIR_COLUMNS, "reason"]), stats)


def _kind(reason: str) -> str:
    """Group rejects for the summary: "prompt NSFW word 'x'" -> "prompt NSFW word" (no values)."""
    reason = reason.split("'")[0].split(":")[0]
    words = [w for w in reason.split() if any(ch.isalpha() for ch in w) and not any(ch.isdigit() for ch in w)]
    return " ".join(words)


def _pick(row: dict, columns) -> dict:
    return {c: row.get(c) for c in columns}


def _drop_flagged(table: pd.DataFrame, cfg: PairConfig, reject) -> pd.DataFrame:
    if cfg.max_nsfw_score is None:
        return table
    keep = pd.Series(True, index=table.index)
    for col in NSFW_SCORE_COLUMNS:
        if col in table.columns:
            flagged = pd.to_numeric(table[col], errors="coerce") > cfg.max_nsfw_score
            for idx in table.index[flagged & keep]:
                reject(None, table.at[idx, cfg.prompt_column] if cfg.prompt_column in table else None, "input",
                       f"{col} {table.at[idx, col]} > {cfg.max_nsfw_score}")
            keep &= ~flagged
    return table[keep]


def _rows_by_quality(table: pd.DataFrame, cfg: PairConfig, stats: PairStats) -> tuple[list[dict], list[dict]]:
    """Distinct high- and low-quality rows (first occurrence of each normalised prompt), each up to cfg.limit."""
    out, seen, low = [], set(), []
    for row in table.to_dict("records"):
        prompt = row.get(cfg.prompt_column)
        if not isinstance(prompt, str):
            stats.quality["missing"] += 1
            continue
        label = classify(prompt, cfg.quality)
        stats.quality[label] += 1
        key = normalise(prompt)
        if label == "low" and key not in seen and (cfg.limit is None or len(low) < cfg.limit):
            seen.add(key)
            low.append(row)
        if label != "high":
            continue
        if key in seen or (cfg.limit is not None and len(out) >= cfg.limit):
            continue
        seen.add(key)
        out.append(row)
    stats.high_unique = len(out)
    log.info("quality split: %s; %d distinct high-quality prompts", dict(stats.quality), len(out))
    return out, low


def _summary_pairs(high, cfg, summariser, candidates, reject, on_progress):
    scores = [c for c in SCORE_COLUMNS if high and c in high[0]]
    for start in range(0, len(high), cfg.batch_size):
        rows = high[start:start + cfg.batch_size]
        prompts = [r[cfg.prompt_column] for r in rows]
        summaries = summariser.summarise(prompts)
        if len(summaries) != len(prompts):
            raise RuntimeError(f"summariser returned {len(summaries)} summaries for {len(prompts)} prompts")
        for row, prompt, raw in zip(rows, prompts, summaries):
            if not raw or not str(raw).strip():
                reject(None, prompt, "summary", "summariser returned nothing")
            else:
                candidates.append({**_pick(row, scores), "raw_prompt": str(raw), "prompt": prompt,
                                   "source": "summary"})
        if on_progress:
            on_progress("summary", len(rows))


def _expansion_pairs(low, cfg, expander, candidates, reject, on_progress):
    for start in range(0, len(low), cfg.batch_size):
        raws = [r[cfg.prompt_column] for r in low[start:start + cfg.batch_size]]
        expansions = expander.expand(raws)
        if len(expansions) != len(raws):
            raise RuntimeError(f"expander returned {len(expansions)} prompts for {len(raws)} raw prompts")
        for raw, prompt in zip(raws, expansions):
            if not prompt or not str(prompt).strip():
                reject(raw, None, "expansion", "expander returned nothing")
            else:
                candidates.append({"raw_prompt": raw, "prompt": str(prompt), "source": "expansion"})
        if on_progress:
            on_progress("expansion", len(raws))


def _image_loader(cfg: PairConfig) -> Callable:
    """row -> PIL image from ``cfg.image_column``: encoded bytes, or a path under ``cfg.image_root``."""
    from pez_core.images import ImageError, decode_image, load_image

    def load(row: dict):
        value = row.get(cfg.image_column)
        if isinstance(value, dict) and "bytes" in value:  # Hugging Face datasets' Image feature
            value = value["bytes"]
        if isinstance(value, (bytes, bytearray)):
            return decode_image(bytes(value), f"{cfg.image_column} of {row.get(cfg.prompt_column)!r:.40}")
        if isinstance(value, str) and value:
            path = Path(cfg.image_root) / value if cfg.image_root else Path(value)
            return load_image(path)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            raise ImageError(f"column {cfg.image_column!r}", "no image for this row")
        raise ImageError(f"column {cfg.image_column!r}", f"unsupported value of type {type(value).__name__}")

    return load


def _caption_pairs(high, cfg, captioner, load, candidates, reject, on_progress):
    from pez_core.images import ImageError

    scores = [c for c in SCORE_COLUMNS if high and c in high[0]]
    for start in range(0, len(high), cfg.batch_size):
        rows, images = [], []
        for row in high[start:start + cfg.batch_size]:
            try:
                images.append(load(row))
                rows.append(row)
            except ImageError as e:
                reject(None, row[cfg.prompt_column], "caption", f"image error: {e}")
        if not images:
            continue
        captions = captioner.caption(images)
        if len(captions) != len(images):
            raise RuntimeError(f"captioner returned {len(captions)} captions for {len(images)} images")
        for row, raw in zip(rows, captions):
            if not raw or not str(raw).strip():
                reject(None, row[cfg.prompt_column], "caption", "captioner returned nothing")
            else:
                candidates.append({**_pick(row, scores), "raw_prompt": str(raw), "prompt": row[cfg.prompt_column],
                                   "source": "caption"})
        if on_progress:
            on_progress("caption", len(rows))


def write_pairs(pairs: pd.DataFrame, path: str | Path, row_group_size: int = 1000) -> Path:
    """Write pairs (or rejects) as one Parquet file, creating parent folders. Row groups of
    ``row_group_size`` rows let ``label --rows-per-shard`` spread one file over several actors."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(pairs, preserve_index=False), path, row_group_size=row_group_size)
    return path
