"""Continuous batching of ``POST /v1/invert`` over real HTTP on 127.0.0.1 (a local Ray, the tiny CLIP).

One app with 2 slots per group: a request joins the running PEZ batch of its group at the next step,
a request of another group runs alongside, a finished target's slot goes to the next queued request,
and every prompt is the one ``pez_core.invert`` gives that image alone with the same seed. The expired
request freeing its slot is tested on test_serve.py's one-slot app (a 504 costs its time limit).
"""

import asyncio
import base64
import time

import httpx
import pytest

from tests.test_serve import free_port, png

SLOTS = 2


@pytest.fixture(scope="module")
def served(ray_cluster, tiny_lm_dir, tiny_clip_dir):
    from ray import serve

    from serve.app import build_app
    from serve.settings import AppArgs

    app = build_app(AppArgs(rewrite_model=str(tiny_lm_dir), clip_model=str(tiny_clip_dir), model_num_cpus=0.25,
                            invert_max_batch_size=SLOTS, max_steps=2000, invert_timeout_s=60, prompt_lm="none",
                            auth_token_env="PROMPTMINE_TEST_UNSET_VAR"))
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 90})
    serve.run(app, name="refill", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.fixture(scope="module")
def images(sample_images):
    return [png(im) for im in sample_images]


def body(image: bytes, **options) -> dict:
    return {"image_base64": base64.b64encode(image).decode(), "prompt_len": 4, **options}


async def stats(c: httpx.AsyncClient) -> dict:
    return (await c.get("/v1/models")).json()["invert"]["stats"]


async def until_running(c: httpx.AsyncClient, n: int, timeout: float = 30) -> None:
    """Poll GET /v1/models until ``n`` PEZ slots are occupied (the replica's own state, no fixed sleep)."""
    end = time.monotonic() + timeout
    while (await stats(c))["running"] < n:
        assert time.monotonic() < end, f"fewer than {n} slots occupied after {timeout} s"
        await asyncio.sleep(0.02)


def test_a_short_request_does_not_wait_for_a_long_one(served, images):
    """Catches today's (pre-refill) design: ``@serve.batch`` ran one batch to completion before the next,
    so a 5-step request sent while a 400-step one ran waited for all of it and returned after it."""

    async def scenario():
        async with httpx.AsyncClient(base_url=served, timeout=60) as c:
            long = asyncio.create_task(c.post("/v1/invert", json=body(images[0], steps=400, early_stop=False)))
            await until_running(c, 1)
            short = await c.post("/v1/invert", json=body(images[1], steps=5, seed=2))
            long_done_first = long.done()
            return short, await long, long_done_first

    short, long, long_done_first = asyncio.run(scenario())
    assert (short.status_code, long.status_code) == (200, 200), (short.text, long.text)
    assert not long_done_first
    assert (short.json()["steps_run"], long.json()["steps_run"]) == (5, 400)
    assert short.json()["latency_ms"] * 3 < long.json()["latency_ms"], (short.json(), long.json())


def test_a_request_joins_the_running_batch_of_its_group(served, images):
    """Catches: a new request waiting for the running batch to end, or running in a batch of its own
    (its batch_size would be 1), instead of taking the free slot at the next step."""

    async def scenario():
        async with httpx.AsyncClient(base_url=served, timeout=60) as c:
            before = await stats(c)
            first = asyncio.create_task(c.post("/v1/invert", json=body(images[0], steps=300, early_stop=False)))
            await until_running(c, 1)
            second = await c.post("/v1/invert", json=body(images[1], steps=300, early_stop=False, seed=1))
            return before, await first, second, await stats(c)

    before, first, second, after = asyncio.run(scenario())
    assert (first.status_code, second.status_code) == (200, 200), (first.text, second.text)
    assert (first.json()["batch_size"], second.json()["batch_size"]) == (1, SLOTS)
    assert after["items"] - before["items"] == 2 and after["requests"] - before["requests"] == 2
    assert after["batch_steps"] - before["batch_steps"] < 600  # they shared steps
    assert 0 < after["mean_slot_occupancy"] <= 1 and after["max_batch_size"] == SLOTS


def test_prompts_equal_the_image_run_alone_with_its_seed(served, images, tiny_clip):
    """Five requests through two slots (refilled as targets finish) and a request of another group
    alongside. Catches: a request's seed not reaching its target (a slot's or a batch's seed), state
    leaking from a slot's previous target, and results that depend on the batch's composition."""
    from pez_core import PEZConfig, decode_image, image_target, invert

    requests = [(images[i % len(images)], 30 + 10 * (i == 4), 10 + i) for i in range(6)]  # the last: 40 steps

    async def scenario():
        async with httpx.AsyncClient(base_url=served, timeout=60) as c:
            before = await stats(c)
            out = await asyncio.gather(*(c.post("/v1/invert", json=body(im, steps=steps, seed=seed))
                                         for im, steps, seed in requests))
            return before, out, await stats(c)

    before, responses, after = asyncio.run(scenario())
    assert [r.status_code for r in responses] == [200] * len(requests), [r.text for r in responses]
    assert after["items"] - before["items"] == len(requests)
    for (image, steps, seed), r in zip(requests, responses):
        target = image_target(tiny_clip, [decode_image(image)], seed=seed)
        [alone] = invert(tiny_clip, [target], PEZConfig(steps=steps, prompt_len=4))
        got = r.json()
        assert (got["prompt"], got["token_ids"]) == (alone.text, alone.token_ids), seed
        assert (got["best_step"], got["steps_run"]) == (alone.best_step, alone.steps_run), seed
        assert got["cosine"] == pytest.approx(alone.cosine, abs=1e-5)
        assert 1 <= got["batch_size"] <= SLOTS
