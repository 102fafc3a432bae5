"""Hostile requests against the real app over real HTTP on 127.0.0.1 (one app for the module).

Each row of ``CASES`` is one request and the error it must get: status, error ``type`` and ``field``.
Every error body is JSON in the API's shape and repeats none of the values the client sent. After
the table the server must still answer normal requests. Then the cases a table cannot hold: a body
that stalls half-way (408 within the body time limit) and a saturated ingress (Serve's proxy answers
503, as JSON through serve/proxy.py).
"""

import base64
import json
import os
import socket
import struct
import time
import zlib

import httpx
import pytest

from tests.test_serve import free_port, noise_png

TOKEN = "pm-fuzz-" + os.urandom(8).hex()
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BODY_TIMEOUT_S = 2.0
JSON = {"content-type": "application/json"}


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (valid CRCs), with almost no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


IMG = b64(noise_png(16))
MANY_WORDS = " ".join(f"qqword{i}" for i in range(1000))


def rw(**body):  # a JSON rewrite request
    return ("/v1/rewrite", {"json": body})


def inv(**body):  # a JSON invert request with a valid image unless given
    return ("/v1/invert", {"json": {"image_base64": IMG, **body}})


def raw(path, data: bytes, ctype="application/json"):
    return (path, {"content": data, "headers": {"content-type": ctype}})


def form(**fields):  # a multipart invert request
    image = fields.pop("image", noise_png(16))
    return ("/v1/invert", {"files": {"image": ("x.png", image, "image/png")}, "data": fields})


# (id, (path, httpx kwargs), status, type, field)
CASES = [
    # seeds: 0 to 2**32 - 1, strict integers
    ("rw-seed-2^64", rw(prompt="a cat", mode="sample", seed=2**64), 422, "validation_error", "seed"),
    ("rw-seed-2^70", rw(prompt="a cat", mode="sample", seed=2**70), 422, "validation_error", "seed"),
    ("rw-seed-2^32", rw(prompt="a cat", mode="sample", seed=2**32), 422, "validation_error", "seed"),
    ("rw-seed-negative", rw(prompt="a cat", seed=-77777), 422, "validation_error", "seed"),
    ("rw-seed-bool", rw(prompt="a cat", seed=True), 422, "validation_error", "seed"),
    ("inv-seed-2^64", inv(seed=2**64), 422, "validation_error", "seed"),
    ("inv-seed-2^32", inv(seed=2**32), 422, "validation_error", "seed"),
    ("inv-seed-float", inv(seed=12345.5), 422, "validation_error", "seed"),
    ("form-seed-2^64", form(seed=str(2**64)), 422, "validation_error", "seed"),
    # lone surrogates
    ("rw-surrogate", raw("/v1/rewrite", b'{"prompt": "qqcat \\ud800"}'), 422, "validation_error", "prompt"),
    ("rw-surrogate-list", raw("/v1/rewrite", b'{"prompts": ["ok", "\\udfff qqdog"]}'), 422, "validation_error",
     "prompts[1]"),
    ("inv-surrogate-ban", raw("/v1/invert", json.dumps({"image_base64": IMG}).encode()[:-1] + b', "ban": ["\\ud800"]}'),
     422, "validation_error", "ban[0]"),
    ("inv-surrogate-image", raw("/v1/invert", b'{"image_base64": "\\ud800"}'), 422, "validation_error", "image_base64"),
    # strict types: booleans, floats and strings are not integers
    ("rw-max-new-tokens-true", rw(prompt="a cat", max_new_tokens=True), 422, "validation_error", "max_new_tokens"),
    ("rw-max-new-tokens-float", rw(prompt="a cat", max_new_tokens=4.0), 422, "validation_error", "max_new_tokens"),
    ("rw-max-new-tokens-str", rw(prompt="a cat", max_new_tokens="12345"), 422, "validation_error", "max_new_tokens"),
    ("rw-top-k-false", rw(prompt="a cat", top_k=False), 422, "validation_error", "top_k"),
    ("rw-prompt-number", rw(prompt=123456), 422, "validation_error", "prompt"),
    ("inv-steps-true", inv(steps=True), 422, "validation_error", "steps"),
    ("inv-prompt-len-float", inv(prompt_len=4.0), 422, "validation_error", "prompt_len"),
    ("form-steps-true", form(steps="true"), 422, "validation_error", "steps"),
    # non-finite floats
    ("rw-temperature-nan", raw("/v1/rewrite", b'{"prompt": "a cat", "temperature": NaN}'), 422, "validation_error",
     "temperature"),
    ("rw-temperature-inf", raw("/v1/rewrite", b'{"prompt": "a cat", "temperature": Infinity}'), 422,
     "validation_error", "temperature"),
    ("rw-temperature-1e999", raw("/v1/rewrite", b'{"prompt": "a cat", "temperature": 1e999}'), 422,
     "validation_error", "temperature"),
    ("rw-top-p-minus-inf", raw("/v1/rewrite", b'{"prompt": "a cat", "top_p": -Infinity}'), 422, "validation_error",
     "top_p"),
    ("inv-steps-nan", raw("/v1/invert", json.dumps({"image_base64": IMG}).encode()[:-1] + b', "steps": NaN}'), 422,
     "validation_error", "steps"),
    # bodies that are not JSON, or not the JSON we take
    ("rw-not-utf8", raw("/v1/rewrite", b'{"prompt": "\xff\xfe qqbytes"}'), 400, "malformed_json", "body"),
    ("inv-not-utf8", raw("/v1/invert", b"\xc3\x28\xa0\xa1"), 400, "malformed_json", "body"),
    ("rw-nested-deep", raw("/v1/rewrite", b'{"prompt": ' + b"[" * 100_000), 400, "malformed_json", "body"),
    ("inv-nested-deep", raw("/v1/invert", b"{\"a\": " * 20_000), 400, "malformed_json", "body"),
    ("rw-nested-shallow", rw(prompts=[[[["qqdeep"]]]]), 422, "validation_error", "prompts[0]"),
    ("rw-empty-body", raw("/v1/rewrite", b""), 400, "malformed_json", "body"),
    ("rw-bom", raw("/v1/rewrite", b'\xef\xbb\xbf{"prompt": "a cat"}'), 400, "malformed_json", "body"),
    ("rw-array-body", raw("/v1/rewrite", b'["qqarray", 1]'), 422, "validation_error", "body"),
    ("rw-null-body", raw("/v1/rewrite", b"null"), 422, "validation_error", "body"),
    ("rw-long-unknown-key", rw(prompt="a cat", **{"k" * 500: 1}), 422, "validation_error", "k" * 64),
    # content types
    ("rw-text-plain", raw("/v1/rewrite", b'{"prompt": "a cat"}', "text/plain"), 415, "unsupported_media_type",
     "Content-Type"),
    ("rw-form-urlencoded", raw("/v1/rewrite", b"prompt=qqcat", "application/x-www-form-urlencoded"), 415,
     "unsupported_media_type", "Content-Type"),
    ("rw-odd-ctype", raw("/v1/rewrite", b'{"prompt": "a cat"}', "application/qqevil+json"), 415,
     "unsupported_media_type", "Content-Type"),
    ("inv-odd-ctype", raw("/v1/invert", b"GIF89a", "image/qqgif"), 415, "unsupported_media_type", "Content-Type"),
    ("form-no-boundary", raw("/v1/invert", b"qqgarbage--", "multipart/form-data"), 400, "invalid_request", "body"),
    # ban lists: words and characters, per entry and in all
    ("inv-ban-1000-words", inv(ban=[MANY_WORDS]), 422, "validation_error", "ban[0]"),
    ("inv-ban-long-word", inv(ban=["q" * 65]), 422, "validation_error", "ban[0]"),
    ("inv-ban-many-words", inv(ban=["qqa qqb qqc qqd qqe qqf qqg qqh"] * 9), 422, "validation_error", "ban"),
    ("inv-ban-many-chars", inv(ban=["qqzebra" * 9] * 20), 422, "validation_error", "ban"),
    ("inv-ban-not-list", inv(ban="qqstring"), 422, "validation_error", "ban"),
    ("inv-ban-10000-entries", inv(ban=[f"qq{i}" for i in range(10_000)]), 422, "validation_error", "ban"),
    ("form-ban-1000-words", form(ban=MANY_WORDS), 422, "validation_error", "ban[0]"),
    # images: huge headers, empty, not an image
    ("inv-png-100000^2", inv(image_base64=b64(png_declaring(100_000, 100_000))), 413, "payload_too_large", "image"),
    ("inv-png-9000x9000", inv(image_base64=b64(png_declaring(9000, 9000))), 413, "payload_too_large", "image"),
    ("form-png-100000^2", form(image=png_declaring(100_000, 100_000)), 413, "payload_too_large", "image"),
    ("inv-empty-data-url", inv(image_base64="data:image/png;base64,"), 400, "invalid_image", "image"),
    ("inv-image-number", inv(image_base64=123456), 422, "validation_error", "image_base64"),
    ("inv-bad-base64", inv(image_base64="qq!!notbase64"), 400, "invalid_request", "image_base64"),
    # limits the operator set
    ("rw-num-beams-huge", rw(prompt="a cat", mode="beam", num_beams=10**30), 422, "validation_error", "num_beams"),
    ("rw-min-over-max", rw(prompt="a cat", max_new_tokens=7777, min_new_tokens=8888), 422, "validation_error",
     "min_new_tokens"),
    ("rw-prompt-too-long", rw(prompt="qqlong " * 200), 422, "validation_error", "prompt"),
    ("inv-steps-over", inv(steps=987654), 422, "validation_error", "steps"),
    ("body-over-limit", raw("/v1/invert", b"{" + b" " * 200_000 + b"}"), 413, "payload_too_large", "body"),
]


@pytest.fixture(scope="module")
def fuzz_served(ray_cluster, tiny_lm_dir, tiny_clip_dir, tmp_path_factory):
    from ray import serve

    from serve.app import build_app
    from serve.settings import AppArgs

    token_file = tmp_path_factory.mktemp("fuzz-secret") / "token"
    token_file.write_text(TOKEN)
    app = build_app(AppArgs(rewrite_model=str(tiny_lm_dir), clip_model=str(tiny_clip_dir), model_num_cpus=0.25,
                            max_image_bytes=50_000, max_image_pixels=1000 * 1000, max_steps=300,
                            body_timeout_s=BODY_TIMEOUT_S, ingress_max_ongoing_requests=2,
                            ingress_max_queued_requests=1, auth_token_file=str(token_file)))
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 60})
    serve.run(app, name="fuzz", route_prefix="/")
    yield "127.0.0.1", port
    serve.shutdown()


@pytest.fixture(scope="module")
def fuzz_client(fuzz_served):
    host, port = fuzz_served
    with httpx.Client(base_url=f"http://{host}:{port}", timeout=60, headers=AUTH) as c:
        yield c


def submitted_values(kwargs) -> set[str]:
    """Every value the client sent that is distinctive enough to look for in an answer."""
    out = set()

    def walk(x):
        if isinstance(x, bool) or x is None:
            return
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        elif isinstance(x, (int, float)):
            if len(str(x)) >= 4:
                out.add(str(x))
        elif isinstance(x, str):
            out.update(w for w in x.split() if "qq" in w)
            if "qq" in x or len(x) >= 8:
                out.add(x)

    walk(kwargs.get("json"))
    walk(kwargs.get("data"))
    if "content" in kwargs:  # raw bytes: the marked words, and the content type
        out.update(w.strip("\"{}[],:") for w in kwargs["content"].decode("latin-1").split() if "qq" in w)
        out.add(kwargs["headers"]["content-type"])
    return {v for v in out if len(v) >= 4 and v not in ("image/png", "application/json", "multipart/form-data")}


@pytest.mark.parametrize("request_, status, type_, field", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_request_gets_a_json_4xx_naming_the_field(fuzz_client, request_, status, type_, field):
    path, kwargs = request_
    kwargs = {**kwargs, "headers": {**AUTH, **kwargs.get("headers", {})}}
    start = time.perf_counter()
    r = fuzz_client.post(path, **kwargs)
    assert time.perf_counter() - start < 10  # refused up front, not after model work
    assert r.status_code == status, r.text[:500]
    assert r.headers["content-type"].startswith("application/json"), r.text[:500]
    err = r.json()["error"]
    assert (err["type"], err["field"]) == (type_, field), err
    assert err["message"]
    echoed = [v for v in submitted_values(kwargs) if v in r.text]
    assert echoed == [], f"error body repeats submitted values {echoed}: {r.text[:500]}"


def test_table_is_large_enough():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


def test_still_serves_after_the_table(fuzz_client):
    assert fuzz_client.get("/healthz").json() == {"status": "ok"}
    r = fuzz_client.post("/v1/rewrite", json={"prompt": "a cat in the rain", "max_new_tokens": 4,
                                              "mode": "sample", "seed": 2**32 - 1})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["new_tokens"] <= 4
    r = fuzz_client.post("/v1/invert", json={"image_base64": IMG, "steps": 3, "prompt_len": 3, "seed": 2**32 - 1,
                                             "ban": ["cat dog"]})
    assert r.status_code == 200, r.text
    r = fuzz_client.post("/v1/invert", files={"image": ("x.png", noise_png(16))},
                         data={"steps": "3", "prompt_len": "3"})
    assert r.status_code == 200, r.text


def test_docs_are_offline_and_declare_the_bearer_scheme(fuzz_client):
    page = fuzz_client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<script" not in page.text and "http://" not in page.text and "https://" not in page.text
    assert "/v1/rewrite" in page.text and "openapi.json" in page.text
    assert fuzz_client.get("/redoc").status_code == 404  # ReDoc also needs a CDN: off
    spec = fuzz_client.get("/openapi.json", headers={"Authorization": ""}).json()
    scheme = spec["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert spec["paths"]["/v1/rewrite"]["post"]["security"] == [{"bearerAuth": []}]
    assert "security" not in spec["paths"]["/healthz"]["get"]
    assert "application/json" in spec["paths"]["/v1/rewrite"]["post"]["requestBody"]["content"]


def test_a_client_cannot_lift_or_shorten_the_proxy_time_limit(fuzz_client):
    """Serve's proxy honours x-request-timeout-seconds (meant for a trusted HAProxy); serve/proxy.py
    drops it, so a 0.2 s hint on a run of about a second is ignored (the proxy would answer 408)."""
    r = fuzz_client.post("/v1/invert", json={"image_base64": IMG, "steps": 300, "prompt_len": 8},
                         headers={"x-request-timeout-seconds": "0.2"})
    assert r.status_code == 200, r.text
    assert r.json()["latency_ms"] > 200  # long enough that the hint, if honoured, would have cut it


def half_sent(host: str, port: int, path: str = "/v1/rewrite") -> socket.socket:
    """A connection that sent the headers and half of a 100-byte body, then stalls."""
    s = socket.create_connection((host, port), timeout=30)
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
              f"Authorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\n".encode() + b'{"prompt": "a ca')
    return s


def read_response(s: socket.socket) -> tuple[int, str]:
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < 10:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode("latin-1")


def test_half_sent_body_gets_408_within_the_body_time_limit(fuzz_served, fuzz_client):
    host, port = fuzz_served
    start = time.perf_counter()
    with half_sent(host, port) as s:
        status, body = read_response(s)
    took = time.perf_counter() - start
    assert status == 408, body
    assert json.loads(body[body.index("{"):body.rindex("}") + 1])["error"]["field"] == "body"
    assert BODY_TIMEOUT_S * 0.9 <= took < BODY_TIMEOUT_S + 10
    assert fuzz_client.get("/healthz").status_code == 200


def test_saturated_ingress_answers_503_json(fuzz_served, fuzz_client):
    """Stalled bodies hold the ingress' 2 slots and fill its 1-place queue: Serve's proxy itself
    refuses the requests beyond, and serve/proxy.py makes that refusal JSON."""
    host, port = fuzz_served
    stalled = []
    try:
        for _ in range(6):
            stalled.append(half_sent(host, port))
            time.sleep(0.2)
        answers = [read_response(s) for s in stalled]
    finally:
        for s in stalled:
            s.close()
    statuses = sorted(status for status, _ in answers)
    assert set(statuses) <= {408, 503} and 503 in statuses, answers
    for status, body in answers:
        assert body.lstrip().startswith("{"), f"{status} is not JSON: {body[:200]}"
        err = json.loads(body[body.index("{"):body.rindex("}") + 1])["error"]
        assert err["type"] == ("overloaded" if status == 503 else "request_timeout"), body
    assert fuzz_client.get("/healthz").status_code == 200
