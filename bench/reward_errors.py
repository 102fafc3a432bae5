"""Where a reward model's error lies: its squared error split by the pair source of each labelled row. Prints JSON.

    python bench/reward_errors.py --reward W/r_ps/model --labels W/labels/rows --pairs W/pairs.parquet

``--labels`` are the rows `promptmine label` wrote (raw_prompt, prompt, pick_score, aesthetic_score);
``--pairs`` the table they were labelled from, whose ``source`` column (`world-expansion`, `world`,
`world-invisible`, ...) is joined on (raw_prompt, prompt); a labels table with its own ``source`` column
needs no ``--pairs``. For the reward model (its kind, ps or aes, read from its folder) it reports Pearson and
MSE over all rows and over the rows of the good sources (``--good``), and per source: rows, MSE, bias (mean
label minus prediction) and that source's share of the total squared error. Score rows the model never
trained on (labels of another `pairs --seed`): on its own training rows the figures flatter it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LABEL = {"ps": "pick_score", "aes": "aesthetic_score"}
GOOD_SOURCES = ("world-expansion", "world")  # the faithful pairs of `pairs --source world`


def with_sources(labels: pd.DataFrame, pairs: pd.DataFrame | None) -> pd.DataFrame:
    """The labelled rows with their pair ``source``; a row whose pair is not in ``pairs`` is an error (the
    wrong table was given), not a silent drop."""
    if "source" in labels:
        return labels
    if pairs is None:
        raise ValueError("--labels has no source column: give --pairs, the table they were labelled from")
    sources = pairs.drop_duplicates(["raw_prompt", "prompt"])[["raw_prompt", "prompt", "source"]]
    out = labels.merge(sources, on=["raw_prompt", "prompt"], how="left")
    missing = int(out["source"].isna().sum())
    if missing:
        raise ValueError(f"{missing} of {len(out)} labelled rows are not pairs of --pairs: was it the table "
                         "these labels were made from?")
    return out


def error_report(y: np.ndarray, pred: np.ndarray, sources: np.ndarray, good=GOOD_SOURCES) -> dict:
    """Pearson and MSE overall and on the good rows; per source rows, MSE, bias and share of squared error."""
    y, pred, sources = np.asarray(y, float), np.asarray(pred, float), np.asarray(sources)
    res = y - pred
    total = float((res ** 2).sum())
    ok = np.isin(sources, good)
    out = {"rows": len(y), "pearson": _pearson(y, pred), "mse": float((res ** 2).mean()),
           "good_rows": int(ok.sum()), "pearson_good_rows": _pearson(y[ok], pred[ok]) if ok.sum() > 1 else None,
           "by_source": {}}
    for s in sorted(set(sources.tolist())):
        m = sources == s
        out["by_source"][s] = {"rows": int(m.sum()), "mse": float((res[m] ** 2).mean()), "bias": float(res[m].mean()),
                               "error_share": float((res[m] ** 2).sum() / total) if total else 0.0}
    return out


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reward", required=True, help="a folder from `promptmine train reward`")
    ap.add_argument("--labels", required=True, help="Parquet file or folder of labelled rows")
    ap.add_argument("--pairs", help="the pairs table the labels came from (for its source column)")
    ap.add_argument("--good", default=",".join(GOOD_SOURCES), help="comma-separated sources counted as good")
    ap.add_argument("--max-length", type=int, default=96, help="the reward model's context (as trained)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import torch

    from pez_core.rewrite.reward_model import RewardModel

    torch.set_num_threads(args.threads)
    labels = pd.read_parquet(args.labels)
    df = with_sources(labels, pd.read_parquet(args.pairs) if args.pairs else None)
    rm = RewardModel.from_pretrained(args.reward, max_length=args.max_length, batch_size=64)
    with torch.no_grad():
        pred = rm.score(list(df["raw_prompt"]), list(df["prompt"])).numpy()
    report = error_report(df[LABEL[rm.kind]].to_numpy(), pred, df["source"].to_numpy(), tuple(args.good.split(",")))
    print(json.dumps({"reward": args.reward, "kind": rm.kind, "labels": args.labels, **report}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
