"""The online API over real HTTP on 127.0.0.1: a local Ray, the tiny CLIP and the tiny BLOOM.

Two applications run side by side: ``open`` (defaults, no auth) at ``/`` and ``strict`` (bearer token
from a file, one-slot model queues, a short invert time limit, small image limits) at ``/strict``.
"""

import asyncio
import base64
import io
import os
import socket
from pathlib import Path

import httpx
import pytest
from PIL import Image

TOKEN = "pm-test-" + os.urandom(12).hex()  # unique, so finding it in a log file is meaningful


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(ray_cluster, tiny_lm_dir, tiny_clip_dir, tmp_path_factory):
    from ray import serve
    from ray.serve.api import RunTarget

    from serve.app import build_app
    from serve.settings import AppArgs

    token_file = tmp_path_factory.mktemp("secret") / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    models = dict(rewrite_model=str(tiny_lm_dir), clip_model=str(tiny_clip_dir), model_num_cpus=0.25)
    open_app = build_app(AppArgs(**models, prompt_lm="world", fluency=0.0, rewrite_batch_wait_s=0.05, invert_batch_wait_s=0.2,
                                 max_steps=300, max_prompt_len=16, auth_token_env="PROMPTMINE_TEST_UNSET_VAR"))
    strict_app = build_app(AppArgs(**models, rewrite_max_batch_size=1, invert_max_batch_size=1,
                                   max_ongoing_requests=1, max_queued_requests=1, retry_after_s=3,
                                   invert_timeout_s=1.5, max_steps=1_000_000, max_image_bytes=20_000,
                                   max_image_pixels=300 * 300, auth_token_file=str(token_file)))
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 60})
    serve.run_many([RunTarget(open_app, name="open", route_prefix="/"),
                    RunTarget(strict_app, name="strict", route_prefix="/strict")])
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.fixture(scope="module")
def client(served):
    with httpx.Client(base_url=served, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def auth():
    return {"Authorization": f"Bearer {TOKEN}"}


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def noise_png(size: int, seed: int = 0) -> bytes:
    import numpy as np

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return png(Image.fromarray(pixels))


@pytest.fixture(scope="module")
def sample_png(sample_images):
    return png(sample_images[0])


def assert_error(r: httpx.Response, status: int, field: str | None = None, type: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.text
    err = r.json()["error"]
    assert err["message"]
    if field is not None:
        assert err["field"] == field, err
    if type is not None:
        assert err["type"] == type, err
    return err


async def post_many(base: str, path: str, bodies: list[dict], headers: dict | None = None) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base, timeout=60, headers=headers) as c:
        return await asyncio.gather(*(c.post(path, json=b) for b in bodies))


# ---- happy paths ------------------------------------------------------------------------------------
def test_healthz_docs_and_models(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    spec = client.get("/openapi.json").json()
    assert {"/v1/rewrite", "/v1/invert", "/v1/models", "/healthz"} <= set(spec["paths"])
    assert set(spec["paths"]["/v1/invert"]["post"]["requestBody"]["content"]) == {
        "application/json", "multipart/form-data"}
    assert client.get("/docs").status_code == 200
    assert "securitySchemes" not in spec.get("components", {})  # no token configured on this app
    assert "bearerAuth" in client.get("/strict/openapi.json").json()["components"]["securitySchemes"]
    models = client.get("/v1/models").json()
    assert models["rewrite"]["architecture"] == "BloomForCausalLM"
    assert models["rewrite"]["stats"]["max_batch_size"] == 64  # the default (serve/settings.py)
    assert models["invert"]["context_length"] == 77
    assert models["limits"]["max_steps"] == 300 and models["auth"] is False


def test_rewrite_returns_the_models_greedy_text(client, tiny_lm_dir):
    from pez_core.rewrite.rewriter import Rewriter

    prompts = ["a cat in the rain", "a castle at sunset"]
    expected = Rewriter.from_pretrained(str(tiny_lm_dir)).rewrite_detailed(prompts, max_new_tokens=12)
    r = client.post("/v1/rewrite", json={"prompts": prompts, "max_new_tokens": 12})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["prompt"] for x in body["results"]] == prompts
    assert [x["text"] for x in body["results"]] == [e.text for e in expected]
    assert [x["new_tokens"] for x in body["results"]] == [e.new_tokens for e in expected]
    assert body["model"] == str(tiny_lm_dir) and body["batch_size"] >= 2
    single = client.post("/v1/rewrite", json={"prompt": prompts[0], "max_new_tokens": 12}).json()
    assert [x["text"] for x in single["results"]] == [expected[0].text]


def test_concurrent_rewrites_share_batches_and_keep_their_answers(client, served):
    before = client.get("/v1/models").json()["rewrite"]["stats"]
    prompts = [f"a fox number {i} in a misty forest" for i in range(24)]
    alone = client.post("/v1/rewrite", json={"prompts": prompts[:3], "max_new_tokens": 16}).json()["results"]
    responses = asyncio.run(post_many(served, "/v1/rewrite", [{"prompt": p, "max_new_tokens": 16} for p in prompts]))
    assert [r.status_code for r in responses] == [200] * len(prompts)
    sizes = [r.json()["batch_size"] for r in responses]
    assert max(sizes) > 1, sizes
    assert [r.json()["results"][0]["prompt"] for r in responses] == prompts
    assert [r.json()["results"][0]["text"] for r in responses[:3]] == [x["text"] for x in alone]
    after = client.get("/v1/models").json()["rewrite"]["stats"]
    assert after["max_batch_size_seen"] > 1
    assert after["items"] - before["items"] == 24 + 3
    assert after["batches"] - before["batches"] < 24  # fewer model calls than requests


def test_invert_json_and_multipart_agree(client, sample_png):
    options = {"steps": 20, "prompt_len": 5, "seed": 3}
    r = client.post("/v1/invert", json={"image_base64": base64.b64encode(sample_png).decode(), **options})
    assert r.status_code == 200, r.text
    a = r.json()
    assert len(a["token_ids"]) == 5 and a["steps_run"] == 20 and 0 <= a["best_step"] < 20
    assert -1 <= a["cosine"] <= 1 and a["image_size"] == [224, 224] and a["prompt"]
    form = {k: str(v) for k, v in options.items()}
    b = client.post("/v1/invert", files={"image": ("x.png", sample_png, "image/png")}, data=form).json()
    assert (b["prompt"], b["token_ids"]) == (a["prompt"], a["token_ids"])  # same image, options and seed
    url = "data:image/png;base64," + base64.b64encode(sample_png).decode()
    c = client.post("/v1/invert", json={"image_base64": url, **options}).json()
    assert c["token_ids"] == a["token_ids"]


def test_invert_takes_a_method_and_the_fluency_prior(client, sample_png, auth):
    from pez_core.prompt_lm import PromptLM

    body = {"image_base64": base64.b64encode(sample_png).decode(), "steps": 12, "prompt_len": 5}
    r = client.post("/v1/invert", json={**body, "fluency": 0.5})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["nll"] == pytest.approx(float(PromptLM.load("world").nll([out["token_ids"]])[0]), abs=1e-3)
    assert client.post("/v1/invert", json=body).json()["nll"] is None  # this server's default: off
    r = client.post("/v1/invert", json={**body, "method": "autoprompt-sgd"})
    assert r.status_code == 200 and len(r.json()["token_ids"]) == 5, r.text
    assert_error(client.post("/v1/invert", json={**body, "method": "soft"}), 422, "method")
    assert_error(client.post("/v1/invert", json={**body, "fluency": -1}), 422, "fluency")
    models = client.get("/v1/models").json()["invert"]
    assert models["prompt_lm"] == "world" and models["fluency"] == 0.0
    # a server without a prompt LM says so, naming the field
    assert_error(client.post("/strict/v1/invert", json={**body, "fluency": 0.5}, headers=auth), 422, "fluency")


def test_invert_ban_list_is_respected(client, sample_png):
    free = client.post("/v1/invert", json={"image_base64": base64.b64encode(sample_png).decode(),
                                           "steps": 15, "prompt_len": 6}).json()
    words = free["prompt"].split()[:2]
    r = client.post("/v1/invert", files={"image": ("x.png", sample_png)},
                    data={"steps": "15", "prompt_len": "6", "ban": ",".join(w.upper() for w in words)})
    assert r.status_code == 200, r.text
    assert not set(words) & set(r.json()["prompt"].split())  # whole words, in any case
    r = client.post("/v1/invert", json={"image_base64": base64.b64encode(sample_png).decode(), "steps": 15,
                                        "prompt_len": 6, "ban_substring": words})
    assert r.status_code == 200, r.text
    assert not any(w in token for w in words for token in r.json()["prompt"].split())


def test_concurrent_inverts_run_as_one_batch(client, served, sample_images):
    images = [base64.b64encode(png(im)).decode() for im in sample_images]
    bodies = [{"image_base64": images[i % len(images)], "steps": 100, "prompt_len": 4, "seed": i} for i in range(6)]
    responses = asyncio.run(post_many(served, "/v1/invert", bodies))
    assert [r.status_code for r in responses] == [200] * 6, [r.text for r in responses]
    assert max(r.json()["batch_size"] for r in responses) > 1
    assert client.get("/v1/models").json()["invert"]["stats"]["max_batch_size_seen"] > 1


# ---- errors -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("body, status, field", [
    ({}, 422, "prompt"),
    ({"prompt": "a", "prompts": ["b"]}, 422, "prompt"),
    ({"prompts": "a cat"}, 422, "prompts"),
    ({"prompts": []}, 422, "prompts"),
    ({"prompts": ["a cat", "   "]}, 422, "prompts[1]"),
    ({"prompts": ["ok", "x" * 1001]}, 422, "prompts[1]"),
    ({"prompts": ["p"] * 17}, 422, "prompts"),
    ({"prompt": "a cat", "max_new_tokens": 257}, 422, "max_new_tokens"),
    ({"prompt": "a cat", "max_new_tokens": 0}, 422, "max_new_tokens"),
    ({"prompt": "a cat", "mode": "beam", "num_beams": 9}, 422, "num_beams"),
    ({"prompt": "a cat", "mode": "nucleus"}, 422, "mode"),
    ({"prompt": "a cat", "temperature": "hot"}, 422, "temperature"),
    ({"prompt": "a cat", "max_new_tokens": 4, "min_new_tokens": 5}, 422, "min_new_tokens"),
    ({"prompt": "a cat", "max_tokens": 5}, 422, "max_tokens"),
])
def test_rewrite_errors_name_the_field(client, body, status, field):
    assert_error(client.post("/v1/rewrite", json=body), status, field)


def test_malformed_json_is_a_400(client):
    for path in ("/v1/rewrite", "/v1/invert"):
        r = client.post(path, content=b'{"prompt": "a cat",', headers={"content-type": "application/json"})
        assert_error(r, 400, "body", "malformed_json")


def test_invert_errors_name_the_field(client, sample_png):
    b64 = base64.b64encode(sample_png).decode()
    post = lambda **kw: client.post("/v1/invert", **kw)  # noqa: E731
    assert_error(post(json={"steps": 5}), 422, "image_base64")
    assert_error(post(json={"image_base64": "not base64!!"}), 400, "image_base64")
    assert_error(post(json={"image_base64": base64.b64encode(b"plain text").decode()}), 400, "image", "invalid_image")
    err = assert_error(post(json={"image_base64": base64.b64encode(sample_png[:200]).decode()}), 400, "image")
    assert "truncated" in err["message"]
    assert_error(post(json={"image_base64": b64, "steps": 301}), 422, "steps")
    assert_error(post(json={"image_base64": b64, "steps": 0}), 422, "steps")
    assert_error(post(json={"image_base64": b64, "prompt_len": 17}), 422, "prompt_len")
    assert_error(post(json={"image_base64": b64, "ban": ["w"] * 65}), 422, "ban")
    assert_error(post(json={"image_base64": b64, "colour": 1}), 422, "colour")
    assert_error(post(files={"image": ("x.png", sample_png)}, data={"steps": "many"}), 422, "steps")
    assert_error(post(files={"picture": ("x.png", sample_png)}), 422, "image")
    assert_error(post(files={"image": ("x.png", b"")}), 400, "image")
    assert_error(post(content=sample_png, headers={"content-type": "image/png"}), 415, "Content-Type")


def test_unknown_route_and_method_are_json(client):
    assert_error(client.get("/v2/nothing"), 404, type="not_found")
    assert_error(client.get("/v1/rewrite"), 405)


# ---- the strict app: auth, body and image limits, overload, time limit ---------------------------------
def test_auth_required_and_checked(client, auth, sample_png):
    assert client.get("/strict/healthz").status_code == 200  # probes need no token
    r = client.post("/strict/v1/rewrite", json={"prompt": "a cat", "max_new_tokens": 4})
    err = assert_error(r, 401, "Authorization", "unauthorized")
    assert r.headers["www-authenticate"].startswith("Bearer") and TOKEN not in r.text
    assert_error(client.get("/strict/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
    assert_error(client.get("/strict/v1/models", headers={"Authorization": f"Basic {TOKEN}"}), 401)
    # auth comes before validation: an unauthenticated client learns nothing about the body
    assert_error(client.post("/strict/v1/rewrite", json={"bad": 1}), 401)
    assert "missing" in err["message"]
    ok = client.post("/strict/v1/rewrite", json={"prompt": "a cat", "max_new_tokens": 4}, headers=auth)
    assert ok.status_code == 200, ok.text
    models = client.get("/strict/v1/models", headers=auth).json()
    assert models["auth"] is True and TOKEN not in str(models)


def test_image_limits(client, auth):
    big_bytes = noise_png(120)  # ~43 KB of noise > 20 KB
    r = client.post("/strict/v1/invert", files={"image": ("n.png", big_bytes)}, data={"steps": "2"}, headers=auth)
    assert_error(r, 413, "image")
    many_pixels = png(Image.new("RGB", (400, 400), "white"))  # small file, 160,000 pixels > 90,000
    assert len(many_pixels) < 20_000
    r = client.post("/strict/v1/invert", json={"image_base64": base64.b64encode(many_pixels).decode()}, headers=auth)
    assert "pixels" in assert_error(r, 413, "image")["message"]
    huge = b"x" * 40_000  # x3 = 120 KB: over the body limit (4/3 of 20 KB + 64 KiB), refused unread
    r = client.post("/strict/v1/invert", content=huge * 3, headers={**auth, "content-type": "application/json"})
    assert_error(r, 413, "body", "payload_too_large")


def test_overload_sheds_with_503_and_retry_after(served, auth):
    bodies = [{"prompt": f"a robot {i}", "max_new_tokens": 48, "min_new_tokens": 48} for i in range(16)]
    responses = asyncio.run(post_many(served, "/strict/v1/rewrite", bodies, headers=auth))
    codes = sorted(r.status_code for r in responses)
    assert set(codes) <= {200, 503}, [r.text for r in responses]
    assert 200 in codes and 503 in codes, codes
    shed = [r for r in responses if r.status_code == 503]
    for r in shed:
        assert_error(r, 503, type="overloaded")
        assert r.headers["retry-after"] == "3"


def test_time_limit_gives_504_json_and_frees_the_model(client, auth, sample_png):
    import time

    b64 = base64.b64encode(sample_png).decode()
    start = time.perf_counter()
    r = client.post("/strict/v1/invert", json={"image_base64": b64, "steps": 1_000_000, "prompt_len": 4, "early_stop": False},
                    headers=auth)
    assert_error(r, 504, type="timeout")
    assert time.perf_counter() - start < 10
    # the expired target was cancelled: its one slot is free at the stream's next step (the replica's own
    # count of occupied slots; a cancel that did nothing would keep it at 1 for a million steps)
    end = time.monotonic() + 5
    while (stats := client.get("/strict/v1/models", headers=auth).json()["invert"]["stats"])["running"]:
        assert time.monotonic() < end, f"the expired request still holds its slot: {stats}"
        time.sleep(0.02)
    assert stats["cancelled"] >= 1 and stats["queued"] == 0
    ok = client.post("/strict/v1/invert", json={"image_base64": b64, "steps": 5, "prompt_len": 4}, headers=auth)
    assert ok.status_code == 200, ok.text
    assert ok.json()["latency_ms"] < 1400  # less than the time limit


def test_token_never_reaches_the_logs(client, auth, ray_cluster):
    for _ in range(2):
        assert client.get("/strict/v1/models", headers=auth).status_code == 200
    assert client.get("/strict/v1/models").status_code == 401
    node = ray_cluster._private.worker._global_node
    logs = Path(node.get_logs_dir_path())
    files = [p for p in logs.rglob("*") if p.is_file()]
    serve_text = "".join(p.read_text(errors="ignore") for p in files if "serve" in str(p.relative_to(logs)))
    assert "/v1/models" in serve_text and "401" in serve_text  # the access log saw these requests
    leaked = [str(p) for p in files if TOKEN.encode() in p.read_bytes()]
    assert leaked == []
