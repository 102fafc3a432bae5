"""Learning-rate schedules and restarts inside the batch (PEZConfig.lr_schedule, restart_patience)."""

import math

import pytest
import torch

from pez_core import PEZConfig, image_target, invert, invert_stream
from pez_core.pez import _AdamW, lr_factor


@pytest.fixture(scope="module")
def targets(tiny_clip, sample_images):
    return [image_target(tiny_clip, [im], seed=70 + i) for i, im in enumerate(sample_images)]


def test_lr_factor_warmup_cosine_and_step():
    """Catches: warm-up missing, the decay starting at the warm-up's start, cosine ends wrong, step drops misplaced."""
    t = torch.arange(1, 102)
    assert lr_factor(PEZConfig(steps=100), t) is None  # the paper's constant lr: the exact scalar path
    f = lr_factor(PEZConfig(steps=101, lr_schedule="cosine", lr_warmup=10, lr_final=0.1), t)
    assert f[:10].tolist() == pytest.approx([i / 10 for i in range(1, 11)])  # linear warm-up to lr
    # then the decay (torch's CosineAnnealingLR: full lr on its first step, lr_final one step past the horizon)
    assert f[10] == 1 and f[11] == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi / 91)) / 2)
    assert f[100] == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi * 90 / 91)) / 2) and bool((f[10:].diff() <= 0).all())
    g = lr_factor(PEZConfig(steps=100, lr_schedule="cosine", lr_horizon=50), t)
    assert g[49] > 0 and g[50] == pytest.approx(0.0) and g[60] == 0  # horizon before the budget: 0 from there on
    s = lr_factor(PEZConfig(steps=100, lr_schedule="step", lr_final=0.01), t)
    assert s[49] == 1 and s[50] == pytest.approx(0.1) and s[74] == pytest.approx(0.1) and s[75] == pytest.approx(0.01)
    for bad in ({"lr_schedule": "linear"}, {"lr_final": 1.5}, {"lr_schedule": "step"}, {"lr_warmup": -1},
                {"lr_horizon": 5, "lr_warmup": 5}, {"restart_patience": 0}):
        with pytest.raises(ValueError):
            PEZConfig(**bad)


def test_batched_adamw_with_a_per_row_lr_equals_torch_adamw():
    """Catches: the factor not applied to the update or to the weight decay, or to the wrong rows."""
    gen = torch.Generator().manual_seed(1)
    start = torch.randn(3, 2, 5, generator=gen)
    ours = start.clone()
    theirs = [start[i].clone().requires_grad_(True) for i in range(3)]
    opt = _AdamW(ours, lr=0.3, weight_decay=0.1)
    torch_opts = [torch.optim.AdamW([p], lr=0.3, weight_decay=0.1) for p in theirs]
    for t in range(1, 9):
        factor = torch.tensor([1.0, 0.5 / t, 2.0 * t], dtype=torch.float64)  # each row its own lr
        grad = torch.randn(3, 2, 5, generator=gen) * t
        opt.step(torch.arange(3), grad, torch.full((3,), t), factor)
        for i, (p, o) in enumerate(zip(theirs, torch_opts)):
            o.param_groups[0]["lr"] = 0.3 * float(factor[i])
            p.grad = grad[i].clone()
            o.step()
    torch.testing.assert_close(ours, torch.stack([p.detach() for p in theirs]), rtol=1e-6, atol=1e-6)


def test_schedule_runs_on_each_targets_own_step(tiny_clip, targets):
    """Catches: the schedule on the batch's step (or the slot's first target's) instead of the target's own:
    a target refilled into a slot mid-run would then get a different prompt than it gets alone."""
    cfg = PEZConfig(prompt_len=6, steps=40, lr=0.3, lr_schedule="cosine", lr_warmup=4, plateau_patience=6,
                    plateau_ratio=0.3)
    got = dict(invert_stream(tiny_clip, iter(targets), cfg, slots=2))
    assert len({r.steps_run for r in got.values()}) > 1  # stopped at different steps: refills mid-run
    for i, t in enumerate(targets):
        [alone] = invert(tiny_clip, [t], cfg)
        assert (got[i].token_ids, got[i].steps_run) == (alone.token_ids, alone.steps_run), i


def test_schedule_reaches_the_optimiser(tiny_clip, targets):
    """Catches: the schedule computed but not applied. With lr_final 0 at horizon 6 the lr is 0 from own step 7
    on (the decay scales the weight decay too), so the prompt, hence the projected ids and cosine, freeze."""
    cfg = PEZConfig(prompt_len=6, steps=20, lr=0.5, early_stop=False, lr_schedule="cosine", lr_horizon=6)
    sims: list[list[float]] = [[] for _ in targets[:2]]
    trace = lambda idx, own, sim: [sims[i].append(c) for i, c in zip(idx, sim.tolist())]
    dict(invert_stream(tiny_clip, iter(targets[:2]), cfg, slots=2, trace=trace))
    for s in sims:
        assert len(set(s[:6])) > 1  # it moved while the lr was up
        assert len(set(s[7:])) == 1, s  # ... and not once the schedule reached 0


def test_a_restart_reseeds_in_place_and_keeps_the_best(tiny_clip, targets):
    """Catches: a restart that loses the best prompt (or its step), that keeps the old prompt or AdamW moments,
    that resets the target's own step count (its budget and schedule), or a seed not the target's own."""
    from pez_core import Vocabulary
    from pez_core.stream import _Slots

    cfg = PEZConfig(prompt_len=6, steps=200, lr=0.3, early_stop=False, restart_patience=4)
    vocab = Vocabulary.from_config(tiny_clip, cfg)
    slots = _Slots(tiny_clip, vocab, cfg, 2)
    slots.load(1, 0, targets[0])
    active = torch.tensor([1])
    for step in range(1, 200):
        before = (slots.best_cos[1].item(), slots.best_ids[1].clone(), slots.best_step[1].item())
        slots.step(active, check=False)
        if slots.restarts[1] == 1:
            break
    else:
        pytest.fail("no restart in 200 steps")
    assert before[2] < step - 1  # the restart came after steps without a better prompt: the best is old
    assert slots.best_cos[1].item() == before[0] and torch.equal(slots.best_ids[1], before[1])
    assert slots.best_step[1].item() == before[2] and slots.t[1].item() == step  # own steps carry on
    gen = torch.Generator().manual_seed(targets[0].seed * 1_000_003 + 1)
    assert torch.equal(slots.prompts[1], slots.table[vocab.random_ids(6, gen)].float())
    assert not slots.opt.m[1].any() and not slots.opt.v[1].any() and slots.run_t[1].item() == 0


def test_restarts_keep_results_independent_of_the_batch(tiny_clip, targets):
    """Catches: restart state (seed, count, the run's best) shared between slots or not reset on a refill;
    and a result that is not the best prompt over all restarts."""
    cfg = PEZConfig(prompt_len=6, steps=60, lr=0.3, restart_patience=5, plateau_patience=15, plateau_ratio=0.3)
    best = {}
    trace = lambda idx, own, sim: [best.__setitem__(i, max(best.get(i, -2.0), c)) for i, c in zip(idx, sim.tolist())]
    got = dict(invert_stream(tiny_clip, iter(targets), cfg, slots=2, trace=trace))
    assert sum(r.extra["restarts"] for r in got.values()) > len(targets)
    for i, t in enumerate(targets):
        assert got[i].cosine == pytest.approx(best[i], abs=1e-6)  # the best over every restart
        [alone] = invert(tiny_clip, [t], cfg)
        assert (got[i].token_ids, got[i].steps_run, got[i].extra) == (alone.token_ids, alone.steps_run, alone.extra)
