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


# ---- a live feed (the online endpoint's queue) ---------------------------------------------------
def run_in_thread(stream):
    """Iterate ``stream`` in a thread; returns (results dict, done event, errors list)."""
    import threading

    got, done, errors = {}, threading.Event(), []

    def run():
        try:
            for i, r in stream:
                got[i] = r
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    return got, done, errors


def test_feed_runs_targets_put_while_it_runs_as_they_run_alone(tiny_clip, targets):
    """Catches: the stream waiting on the feed while a slot is occupied (the first target would never
    step until a second arrived), a put while running not joining the batch, the feed's index order."""
    import threading

    from pez_core import TargetFeed

    feed, stepped, starts = TargetFeed(), threading.Event(), []
    stream = invert_stream(tiny_clip, feed, CFG, slots=2, on_step=lambda step, a: stepped.set(),
                           on_start=lambda idx, occupied: starts.append((idx, occupied)))
    assert feed.put(targets[0]) == 0
    got, done, errors = run_in_thread(stream)
    assert stepped.wait(30), "the stream did not step with one of two slots filled"
    assert [feed.put(t) for t in targets[1:3]] == [1, 2]
    feed.close()
    assert done.wait(120) and not errors, errors
    assert sorted(got) == [0, 1, 2]
    assert starts[0] == ([0], 1) and max(occupied for _, occupied in starts) == 2  # later ones joined a running batch
    for i, t in enumerate(targets[:3]):
        [alone] = invert(tiny_clip, [t], CFG)
        assert (got[i].token_ids, got[i].steps_run) == (alone.token_ids, alone.steps_run), i
        assert abs(got[i].cosine - alone.cosine) < 1e-5


def test_cancel_frees_a_running_slot_at_the_next_step_and_drops_a_queued_target(tiny_clip, targets):
    """Catches: cancel as a no-op (the running target would go on to its 100000-step budget: the
    on_step guard fails the test instead), a cancelled queued target still loaded, a result for either."""
    from pez_core import TargetFeed

    cfg = PEZConfig(prompt_len=4, steps=100_000, early_stop=False)
    feed, seen, starts = TargetFeed(), [], []

    def on_step(step, occupied):
        seen.append(step)
        if step == 3:
            feed.cancel(0)  # running
            feed.close()
        assert step < 6, "the cancelled target kept its slot"

    stream = invert_stream(tiny_clip, feed, cfg, slots=1, on_step=on_step,
                           on_start=lambda idx, occupied: starts.append(idx))
    feed.put(targets[0])
    feed.put(targets[1])
    feed.cancel(1)  # queued: never loaded
    feed.cancel(99)  # unknown: ignored
    assert len(feed) == 1  # target 0 waits for the stream
    assert list(stream) == []
    assert seen == [0, 1, 2, 3] and starts == [[0]] and stream.cancelled == 1 and stream.occupied == 0


def test_idle_feed_closes_itself_and_refuses_later_puts(tiny_clip, targets):
    """Catches: an idle stream that never ends, and a put that lands in a feed nobody reads (lost)."""
    from pez_core import FeedClosed, TargetFeed

    with pytest.raises(ValueError, match="idle_timeout"):
        TargetFeed(idle_timeout=0)
    cfg = PEZConfig(prompt_len=4, steps=2)
    feed = TargetFeed(idle_timeout=0.05)
    feed.put(targets[0])
    assert [i for i, _ in invert_stream(tiny_clip, feed, cfg, slots=2)] == [0]  # ran it, then idled out
    assert feed.closed
    with pytest.raises(FeedClosed):
        feed.put(targets[1])
    for delay in range(12):  # a put racing the idle close is either run or refused, never lost
        feed = TargetFeed(idle_timeout=0.002 * (1 + delay % 3))
        got, done, errors = run_in_thread(invert_stream(tiny_clip, feed, cfg, slots=1))
        try:
            index = feed.put(targets[0])
        except FeedClosed:
            index = None
        assert done.wait(30) and not errors, errors
        assert sorted(got) == ([] if index is None else [index])
