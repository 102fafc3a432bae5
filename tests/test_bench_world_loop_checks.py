"""The checks the world rewriting benchmarks print: what a rewrite keeps of its raw prompt
(bench/world_rewrite_loop.py `keeps`), the reward-model probe's pairs and summary (bench/reward_probe.py) and
a reward model's error by pair source (bench/reward_errors.py)."""

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.test_world_loop import assert_fails_the_raw_prompt


def _bench(name: str):
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_keeps_counts_each_named_attribute_and_invisible_objects():
    """Catches: an attribute counted when the raw prompt does not name it, a changed word counted as kept,
    or an object on a background of its own colour not counted as invisible."""
    keeps = _bench("world_rewrite_loop").keeps
    raws = ["a red star at the top", "a large circle on a blue background", "a heart"]
    rewrites = ["a red star at the bottom, large, green background, sharp",  # position changed
                "a large blue circle on a blue background, in the center",  # kept, but invisible
                "a heart, small, red, on the left, white background"]
    got = keeps(raws, rewrites)
    assert got == {"shape": "3/3", "colour": "1/1", "size": "1/1", "position": "0/1", "background": "1/1",
                   "invisible": 1}


def test_probe_pairs_fail_their_raw_prompt_in_the_faithful_rewrites_form():
    """Each probe row: a faithful expansion (the raw prompt word for word, then the rest) and a failed
    rewrite of the kind it names, in the same form with the raw words edited; the probe's summary counts
    the model right where it scores the faithful rewrite higher."""
    probe = _bench("reward_probe")
    rows = probe.probe_pairs(12)
    assert len(rows) == 36 and {r["kind"] for r in rows} >= {"world-invisible", "world-other-shape"}
    for r in rows:
        assert r["faithful"].startswith(r["raw"] + ", ")
        assert r["failed"] != r["faithful"]
        # the same check as the failed pairs of `pairs --bad --expansions 1`
        assert_fails_the_raw_prompt({"raw_prompt": r["raw"], "prompt": r["failed"], "source": r["kind"]}, 1.0)
    # the model is right on 24 rows, wrong on 6 and ties on 6 (a tie is no preference)
    scored = [dict(r, rm_faithful=1.0, rm_failed=0.0 if i % 3 else (2.0 if i % 2 else 1.0), true_faithful=1.0,
                   true_failed=0.0) for i, r in enumerate(rows)]
    total = probe.summarise(scored)["all"]
    assert total["n"] == 36 and total["truth_prefers_faithful"] == 1.0
    assert total["model_prefers_faithful"] == round(24 / 36, 3) and total["model_gap"] == round((24 - 6) / 36, 2)


def test_reward_errors_split_the_squared_error_by_source():
    """Catches: the bias signed as prediction minus label, shares not of the total squared error, the good-row
    Pearson computed over every row, or labelled rows whose pair is unknown dropped without a word."""
    errors = _bench("reward_errors")
    y = np.array([10.0, 12.0, 14.0, 3.0, 4.0, 16.0])
    pred = np.array([11.0, 12.0, 13.0, 9.0, 10.0, 15.0])
    src = np.array(["world-expansion", "world-expansion", "world-expansion", "world-invisible", "world-invisible",
                    "world"])
    r = errors.error_report(y, pred, src)
    inv = r["by_source"]["world-invisible"]
    assert inv == {"rows": 2, "mse": 36.0, "bias": -6.0, "error_share": pytest.approx(72 / 75)}  # over-predicted
    assert r["by_source"]["world-expansion"]["mse"] == pytest.approx(2 / 3)
    assert sum(v["error_share"] for v in r["by_source"].values()) == pytest.approx(1.0)
    assert r["good_rows"] == 4 and r["pearson_good_rows"] == pytest.approx(np.corrcoef(y[[0, 1, 2, 5]],
                                                                                        pred[[0, 1, 2, 5]])[0, 1])
    assert r["pearson"] < r["pearson_good_rows"]  # the invisible rows are where this model is wrong

    labels = pd.DataFrame({"raw_prompt": ["a star", "a circle"], "prompt": ["a star, red", "a circle, blue"],
                           "pick_score": [15.0, 14.0]})
    pairs = pd.DataFrame({"raw_prompt": ["a star", "a star", "a circle"],
                          "prompt": ["a star, red", "a star, red", "a circle, blue"],
                          "source": ["world-expansion", "world-expansion", "world-invisible"]})
    assert errors.with_sources(labels, pairs)["source"].tolist() == ["world-expansion", "world-invisible"]
    with pytest.raises(ValueError, match="1 of 2 labelled rows are not pairs of --pairs"):
        errors.with_sources(labels, pairs.iloc[:2])
