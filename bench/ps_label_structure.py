"""How predictable the world's PickScore stand-in is from what the prompts say; prints JSON.

    python bench/ps_label_structure.py --labels WORKDIR/labels/rows

Reads the rows of `promptmine label` (raw_prompt, prompt, pick_score, pick_score_std, seeds), parses both
prompts with `pez_core.world.parse`, and reports on one 5% held-out split (seed 0, as `--eval-fraction 0.05`
sizes it; not the same rows as the reward model's split):

- the label-noise ceiling of any predictor's Pearson: sqrt(1 - mean(std^2 / seeds) / var(pick_score));
- the share of variance explained by the raw prompt alone (its mean label);
- held-out Pearson of least-squares models over one-hot features of the parsed prompts: whether each raw
  attribute is kept / changed / unnamed, the rewrite's style attributes, then the attribute values, then
  pairwise interactions. A learned reward model `r_ps` below these has not learned what the parser knows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pez_core.world.parse import parse  # noqa: E402

INTERACTIONS = [("hcolour", "hbg"), ("rshape", "hcolour"), ("hshape", "hcolour"), ("colour", "bg"),
                ("rcolour", "hcolour"), ("rbg", "hbg"), ("hshape", "hbg"), ("rshape", "hshape")]


def _cmp(raw, high) -> str:
    return "unnamed" if raw is None else ("kept" if raw == high else "changed")


def features(raw: str, high: str) -> dict[str, str]:
    r, h = parse(raw), parse(high)
    ro = r.objects[0] if r.objects else None
    ho = h.objects[0] if h.objects else None
    get = (lambda o, a: getattr(o, a) if o else None)
    return {
        # kept / changed / unnamed, and what the rewrite adds
        "objects": str(len(h.objects)), "shape": _cmp(get(ro, "shape"), get(ho, "shape")),
        "colour": _cmp(get(ro, "colour"), get(ho, "colour")), "size": _cmp(get(ro, "size"), get(ho, "size")),
        "position": _cmp(r.position, h.position), "bg": _cmp(r.background, h.background),
        "invisible": str(bool(ho and ho.colour and ho.colour == h.background)),
        "fill": str(h.fill), "sharpness": str(h.sharpness), "saturation": str(h.saturation),
        # the values
        "rshape": str(get(ro, "shape")), "rcolour": str(get(ro, "colour")), "rbg": str(r.background),
        "hshape": str(get(ho, "shape")), "hcolour": str(get(ho, "colour")), "hbg": str(h.background),
        "hsize": str(get(ho, "size")), "hposition": str(h.position),
    }


def fit(F: pd.DataFrame, y: np.ndarray, train, held, cols: list[str], pairs=()) -> float:
    """Held-out Pearson of least squares on one-hot ``cols`` (and the ``pairs`` crossed)."""
    X = F[cols].assign(**{f"{a}*{b}": F[a] + "|" + F[b] for a, b in pairs})
    X = np.hstack([pd.get_dummies(X, dtype=float).to_numpy(), np.ones((len(X), 1))])
    w, *_ = np.linalg.lstsq(X[train], y[train], rcond=None)
    return round(float(np.corrcoef(X[held] @ w, y[held])[0, 1]), 3)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", required=True, type=Path, help="rows of `promptmine label` (file or folder)")
    args = ap.parse_args(argv)
    df = pd.read_parquet(args.labels, columns=["raw_prompt", "prompt", "pick_score", "pick_score_std", "seeds"])
    y = df.pick_score.to_numpy()
    F = pd.DataFrame([features(a, b) for a, b in zip(df.raw_prompt, df.prompt)])
    order = np.random.default_rng(0).permutation(len(df))
    held, train = order[:len(df) // 20], order[len(df) // 20:]
    noise = float(((df.pick_score_std ** 2) / df.seeds).mean())
    raw_mean = df.groupby("raw_prompt").pick_score.transform("mean").to_numpy()
    kept = ["objects", "shape", "colour", "size", "position", "bg", "invisible", "fill", "sharpness", "saturation"]
    values = kept + ["rshape", "rcolour", "rbg", "hshape", "hcolour", "hbg", "hsize", "hposition"]
    print(json.dumps({
        "rows": len(df), "raw_prompts": int(df.raw_prompt.nunique()), "held_out": len(held),
        "pick_score_var": round(float(y.var()), 2),
        "noise_ceiling_pearson": round(float(np.sqrt(1 - noise / y.var())), 3),
        "raw_prompt_alone_r2": round(float(1 - ((y - raw_mean) ** 2).mean() / y.var()), 3),
        "pearson_kept_changed": fit(F, y, train, held, kept),
        "pearson_with_values": fit(F, y, train, held, values),
        "pearson_with_interactions": fit(F, y, train, held, values, INTERACTIONS),
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
