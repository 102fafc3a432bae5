"""serve/invert_engine.py through InvertModel's class, without Ray: idle workers end, a model error is a
500 named by its type and fails only its worker, a request arriving as a worker ends is not lost."""

import asyncio
import io
import time

import pytest

from serve.deployments import InvertModel


@pytest.fixture(scope="module")
def model(tiny_clip_dir):
    return InvertModel.func_or_class(str(tiny_clip_dir), idle_s=0.1)


@pytest.fixture(scope="module")
def image(sample_images):
    buf = io.BytesIO()
    sample_images[0].save(buf, "PNG")
    return buf.getvalue()


def ask(model, image, steps=3, seed=0):
    return asyncio.run(model.invert(image, steps, 4, [], seed, time.time() + 60, 10**8))


def test_an_idle_worker_ends_and_the_next_request_starts_one(model, image):
    """Catches: a worker that never ends, or a group still mapped to a worker that ended (the request
    would wait on a feed nobody reads: it would hang until its deadline)."""
    before = model.engine.snapshot()
    first = ask(model, image)
    assert first["steps_run"] == 3 and first["batch_size"] == 1, first
    assert model.engine.snapshot()["requests"] == before["requests"] + 1  # counted before it was answered
    [worker] = model.engine.workers.values()
    worker.thread.join(10)
    assert not worker.thread.is_alive() and model.engine.workers == {}
    assert ask(model, image)["token_ids"] == first["token_ids"]
    assert model.engine.snapshot()["batches"] == before["batches"] + 2
    for i in range(8):  # requests racing the idle close (0.1 s after each answer): each one answered
        time.sleep(0.09 + 0.005 * i)
        assert ask(model, image)["token_ids"] == first["token_ids"]


def test_a_model_error_is_a_500_named_by_its_type(model, image, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("secret detail /etc/passwd")

    monkeypatch.setattr(model.clip, "encode_embeds", broken)
    out = ask(model, image, steps=4)
    assert out == {"error": {"status": 500, "message": "model error: RuntimeError", "field": None,
                             "type": "internal_error"}}
    monkeypatch.undo()
    assert ask(model, image, steps=4)["steps_run"] == 4  # a new worker serves the group


def test_groups_beyond_max_groups_wait_for_one_to_end_or_get_a_503(tiny_clip_dir, image):
    """A replica runs at most ``max_groups`` PEZ batches: a request of a new group waits until a running
    group goes idle and then runs; one whose time limit passes first gets a 503 naming the setting.
    Catches: no cap (the second group would start at once), or a waiter never admitted (it would hang to
    its deadline although the first group ended)."""
    model = InvertModel.func_or_class(str(tiny_clip_dir), idle_s=0.3, max_groups=1)

    async def two(deadline_b: float, steps_a: int = 40):
        a = asyncio.create_task(model.invert(image, steps_a, 4, [], 0, time.time() + 60, 10**8, early_stop=False))
        while not model.engine.workers:  # group A is running
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        b = await model.invert(image, 41, 4, [], 0, time.time() + deadline_b, 10**8)  # another group
        stats = model.engine.snapshot()
        return await a, b, time.monotonic() - t0, stats

    a, b, waited, stats = asyncio.run(two(60))
    assert a["steps_run"] == 40 and b["steps_run"] == 41, (a, b)
    assert waited > 0.3  # B started only after A's worker went idle
    assert stats["max_groups"] == 1 and stats["waiting_for_group"] == 0 and stats["batches"] == 2
    time.sleep(0.5)  # B's worker goes idle and ends

    a, b, waited, _ = asyncio.run(two(1.0, steps_a=600))  # A's 600 steps outlast B's 1 s limit
    assert a["steps_run"] == 600
    assert b["error"]["status"] == 503 and "invert_max_groups=1" in b["error"]["message"], b
    assert b["error"]["type"] == "overloaded" and waited > 0.6  # no upper bound: the loop shares the GIL with PEZ


def test_ban_tables_build_outside_the_lock_and_once_per_ban_list(tiny_clip_dir, monkeypatch):
    """Two new ban lists build their candidate tables at the same time (neither waits for the other's scan
    of the vocabulary) and two requests for the same new list build it once. Catches the table built
    under the cache's lock (the builds would not overlap) and a build per request (two builds of one list)."""
    import threading

    import pez_core

    model = InvertModel.func_or_class(str(tiny_clip_dir), idle_s=0.1)
    real, events, lock = pez_core.Vocabulary, [], threading.Lock()

    def slow(*args, ban=(), **kwargs):
        with lock:
            events.append(("start", ban))
        time.sleep(0.3)
        with lock:
            events.append(("end", ban))
        return real(*args, ban=ban, **kwargs)

    monkeypatch.setattr(pez_core, "Vocabulary", slow)
    keys = [(("cat",), ()), (("dog",), ()), (("cat",), ())]
    got = [None] * 3
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, model._vocabulary(keys[i]))) for i in range(3)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join()
    starts = [e for e in events if e[0] == "start"]
    assert sorted(b for _, b in starts) == [("cat",), ("dog",)]  # one build per list
    assert [k for k, _ in events[:2]] == ["start", "start"]  # the second began before the first ended
    assert got[0] is got[2] and got[0] is not got[1]
    assert model._vocabulary(keys[1]) is got[1] and not model._vocab_building
