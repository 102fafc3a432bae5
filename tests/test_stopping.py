"""The stopping rules of PEZ (pez_core.stopping), alone and inside the loop."""

import math

import pytest
import torch

from pez_core import PEZConfig, image_target, invert
from pez_core.stopping import can_stop_early, patience_at, stopped


def _stops(cfg, steps_done, best_step, best_cos=0.5):
    t = torch.tensor
    return bool(stopped(cfg, t([steps_done]), t([best_step]), t([best_cos]))[0])


def test_plateau_patience_grows_with_the_step_of_the_best():
    cfg = PEZConfig(plateau_patience=100, plateau_ratio=0.5)
    assert patience_at(torch.tensor([0, 199, 999]), cfg).tolist() == [100, 100, 500]
    # best at step 999 (0-based): 500 steps without a better one are needed, 499 are not
    assert not _stops(cfg, 999 + 1 + 499, 999) and _stops(cfg, 999 + 1 + 500, 999)
    assert not _stops(cfg, 1 + 99, 0) and _stops(cfg, 1 + 100, 0)


def test_budget_explicit_patience_and_target_cosine():
    off = PEZConfig(steps=3000, early_stop=False)
    assert not can_stop_early(off)
    assert not _stops(off, 2999, 0) and _stops(off, 3000, 2999)
    assert _stops(PEZConfig(steps=3000, early_stop=False, patience=10), 11, 0)
    assert _stops(PEZConfig(early_stop=False, target_cosine=0.4), 1, 0, best_cos=0.41)
    assert not _stops(PEZConfig(early_stop=False, target_cosine=0.4), 1, 0, best_cos=0.39)


@pytest.mark.parametrize("kwargs, field", [({"plateau_patience": 0}, "plateau_patience"),
                                           ({"plateau_ratio": -0.1}, "plateau_ratio")])
def test_rule_settings_are_validated(kwargs, field):
    with pytest.raises(ValueError, match=field):
        PEZConfig(**kwargs)


def test_the_loop_stops_each_target_exactly_when_the_rule_says(tiny_clip, sample_images):
    """Catches: the rule read on the batch's step or a stale best step, an off-by-one in 'since'."""
    cfg = PEZConfig(prompt_len=6, steps=80, plateau_patience=8, plateau_ratio=0.25)
    targets = [image_target(tiny_clip, [im], seed=i) for i, im in enumerate(sample_images)]
    results = invert(tiny_clip, targets, cfg)
    early = [r for r in results if r.steps_run < cfg.steps]
    assert early, "no target stopped early: the test shows nothing"
    for r in early:
        assert r.steps_run == r.best_step + 1 + math.ceil(max(8, 0.25 * (r.best_step + 1)))
