"""Statistics of the evaluation jobs: means with 95% t-intervals, paired differences and win rates."""

from __future__ import annotations

import math


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
