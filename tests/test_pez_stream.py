"""Continuous batching (pez_core.stream): a target refilled into a freed slot gets the result it gets alone."""

import pytest
import torch

from pez_core import PEZConfig, Target, image_target, invert, invert_stream

# stops quickly and at different steps per target (tiny CLIP, 6 tokens)
CFG = PEZConfig(prompt_len=6, steps=45, plateau_patience=6, plateau_ratio=0.3)


@pytest.fixture(scope="module")
def targets(tiny_clip, sample_images):
    out = [image_target(tiny_clip, [im], seed=50 + i) for i, im in enumerate(sample_images)]
    out.append(image_target(tiny_clip, sample_images[:2], seed=7))  # k = 2: the slots' features get padded
    out.append(Target(out[0].features, "features", seed=8))
    return out


def test_refilled_targets_equal_their_run_alone(tiny_clip, targets):
    """Catches: AdamW's bias correction on the batch's step instead of the target's own, optimiser
    moments or best-so-far not reset when a slot is refilled, the stop rule on the batch's step."""
    stream = invert_stream(tiny_clip, iter(targets), CFG, slots=2)
    got = dict(stream)
    assert sorted(got) == list(range(len(targets)))
    steps = [r.steps_run for r in got.values()]
    assert len(set(steps)) > 1 and max(steps) < CFG.steps  # they stopped at different steps, by the rule
    # slots were refilled mid-run: the batch ran fewer steps than the targets did one after another
    assert stream.global_steps < sum(steps) - 2 * min(steps)
    assert stream.occupancy == pytest.approx(sum(steps) / (2 * stream.global_steps))
    assert stream.occupancy > 0.85
    for i, t in enumerate(targets):
        [alone] = invert(tiny_clip, [t], CFG)
        assert got[i].token_ids == alone.token_ids, i
        assert abs(got[i].cosine - alone.cosine) < 1e-5
        assert (got[i].steps_run, got[i].best_step, got[i].kind) == (alone.steps_run, alone.best_step, alone.kind)


def test_queue_is_read_lazily_and_sync_interval_changes_nothing(tiny_clip, targets):
    pulled = []

    def queue():
        for i, t in enumerate(targets):
            pulled.append(i)
            yield t

    first = []
    stream = invert_stream(tiny_clip, queue(), CFG, slots=3, on_step=lambda step, a: first.append(len(pulled)))
    got = dict(stream)
    assert first[0] == 3  # only as many targets as slots before the first step
    rare = dict(invert_stream(tiny_clip, iter(targets), CFG, slots=3, sync_every=4))
    for i, r in got.items():  # stopped slots wait frozen for the read: later refills, same results
        assert (rare[i].token_ids, rare[i].cosine, rare[i].steps_run) == (r.token_ids, r.cosine, r.steps_run)


def test_fixed_budget_runs_every_step(tiny_clip, targets):
    cfg = PEZConfig(prompt_len=4, steps=12, early_stop=False)
    results = invert(tiny_clip, targets[:3], cfg)
    assert [r.steps_run for r in results] == [12, 12, 12]


def test_bad_slots_and_widths_are_clear_errors(tiny_clip, targets):
    with pytest.raises(ValueError, match="slots"):
        list(invert_stream(tiny_clip, targets, CFG, slots=0))
    bad = Target(torch.ones(1, 32) / 32 ** 0.5, "features")
    with pytest.raises(ValueError, match="target 1 has features of width 32"):
        list(invert_stream(tiny_clip, [targets[0], bad], CFG, slots=1))
