"""The HTTP ingress: a FastAPI app built per replica (``__serve_build_asgi_app__``), so its routes and
middleware see the replica's model handles, limits and auth.

Order of checks on a request: body size (413, before the body is read), bearer token (401, before any
validation detail is revealed), request shape (400 malformed JSON, 422 naming each bad field), the
operator's limits (422/413), then the model call under the ingress' own time limit (504 JSON, shorter
than Serve's ``request_timeout_s``, which would answer a plain-text 408), with full model queues
answered 503 + Retry-After instead of waiting without bound.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import logging
import time

from fastapi import FastAPI, Request
from pydantic import ValidationError
from ray import serve
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from .auth import BearerAuth, load_token
from .errors import ApiError, BodyLimit, error_response, install_error_handlers, validation_error
from .schemas import (ErrorResponse, InvertJSONRequest, InvertOptions, InvertResponse, RewriteRequest,
                      RewriteResponse)
from .settings import Limits

log = logging.getLogger(__name__)

DESCRIPTION = """Prompt tools for text-to-image generators.

* `POST /v1/rewrite`: turn plain prompts into detailed Stable Diffusion prompts (BeautifulPrompt).
* `POST /v1/invert`: learn a hard prompt for an image (PEZ): multipart upload or base64 JSON.

Concurrent requests are batched onto the models. Errors are JSON: `{"error": {"type", "message", "field"}}`.
When a bearer token is configured, `/v1/*` needs `Authorization: Bearer <token>`.
"""

_ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 413, 422, 503, 504)}


class ModelCaller:
    """Calls a model deployment under a time limit; maps overload and timeouts to JSON errors."""

    def __init__(self, handle, name: str):
        self.handle, self.name = handle, name

    async def __call__(self, method: str, timeout: float, retry_after: int, *, pass_deadline: bool = True,
                       **kwargs) -> dict:
        if pass_deadline:
            kwargs["deadline"] = time.time() + timeout
        response = getattr(self.handle, method).remote(**kwargs)

        async def result():
            return await response

        try:
            out = await asyncio.wait_for(result(), timeout)
        except asyncio.TimeoutError:
            response.cancel()
            raise ApiError(504, f"the {self.name} model did not answer within {timeout:g} s",
                           type="timeout") from None
        except (BackPressureError, DeploymentUnavailableError) as e:
            raise ApiError(503, f"the {self.name} model is at capacity; retry after {retry_after} s",
                           type="overloaded", headers={"Retry-After": str(retry_after)}) from e
        if "error" in out:
            e = out["error"]
            raise ApiError(e["status"], e["message"], e.get("field"), type=e.get("type"))
        return out


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    def __init__(self, rewrite_model, invert_model, auth_token_env: str = "PROMPTMINE_API_TOKEN",
                 auth_token_file: str | None = None):
        self.rewrite_model, self.invert_model = rewrite_model, invert_model
        self.rewrite = ModelCaller(rewrite_model, "rewrite")
        self.invert = ModelCaller(invert_model, "invert")
        self.auth = BearerAuth(load_token(auth_token_env, auth_token_file))
        self.limits = Limits()
        log.info("promptmine ingress ready; bearer authentication %s", "on" if self.auth.enabled else "off")

    def reconfigure(self, config: dict) -> None:
        self.limits = Limits(**config)

    def __serve_build_asgi_app__(self):
        return build_api(self)


def _relative_path(scope) -> str:
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root):] or "/" if root and path.startswith(root) else path


class AuthGate:
    """ASGI middleware: the bearer-token check before routing and body parsing (plain ASGI: no
    per-request task, unlike ``@app.middleware``)."""

    def __init__(self, app, auth):
        self.app, self.auth = app, auth  # auth: () -> BearerAuth

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            header = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"authorization"), None)
            try:
                self.auth().check(_relative_path(scope), header)
            except ApiError as e:
                response = error_response(e.status, e.type, e.message, e.field, headers=e.headers)
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def build_api(ing: Ingress) -> FastAPI:
    api = FastAPI(title="promptmine", version="0.1.0", description=DESCRIPTION)
    install_error_handlers(api)

    api.add_middleware(AuthGate, auth=lambda: ing.auth)
    api.add_middleware(BodyLimit, limit=lambda: ing.limits.max_body_bytes)  # outermost: runs first

    @api.get("/healthz", summary="Liveness of the HTTP ingress")
    async def healthz() -> dict:
        return {"status": "ok"}

    @api.get("/v1/models", summary="Models, limits and batching statistics")
    async def models() -> dict:
        retry = ing.limits.retry_after_s
        rewrite, invert = await asyncio.gather(ing.rewrite("describe", 10, retry, pass_deadline=False),
                                               ing.invert("describe", 10, retry, pass_deadline=False))
        return {"rewrite": rewrite, "invert": invert, "limits": ing.limits.model_dump(), "auth": ing.auth.enabled}

    @api.post("/v1/rewrite", response_model=RewriteResponse, responses=_ERRORS,
              summary="Rewrite plain prompts into detailed text-to-image prompts")
    async def rewrite(body: RewriteRequest) -> dict:
        start = time.perf_counter()
        limits = ing.limits
        prompts = body.prompt_list()
        check_rewrite(body, prompts, limits)
        out = await ing.rewrite("rewrite", limits.rewrite_timeout_s, limits.retry_after_s,
                                prompts=prompts, generation=body.generation())
        return {**out, "latency_ms": round((time.perf_counter() - start) * 1000, 2)}

    @api.post("/v1/invert", response_model=InvertResponse, responses={**_ERRORS, 415: {"model": ErrorResponse}},
              summary="Learn a hard prompt for an image (PEZ)", openapi_extra=_INVERT_BODY)
    async def invert(request: Request) -> dict:
        start = time.perf_counter()
        limits = ing.limits
        image, options = await parse_invert(request)
        size = await asyncio.to_thread(check_image, image, limits)
        check_invert(options, limits)
        out = await ing.invert("invert", limits.invert_timeout_s, limits.retry_after_s, image=image,
                               steps=options.steps, prompt_len=options.prompt_len, ban=options.ban,
                               seed=options.seed, max_pixels=limits.max_image_pixels)
        return {**out, "image_size": list(size),
                "latency_ms": round((time.perf_counter() - start) * 1000, 2)}

    return api


# ---- request checks ------------------------------------------------------------------------------
def check_rewrite(body: RewriteRequest, prompts: list[str], limits: Limits) -> None:
    if (body.prompt is None) == (body.prompts is None):
        raise ApiError(422, "give exactly one of 'prompt' (a string) or 'prompts' (a list of strings)", "prompt")
    if not prompts:
        raise ApiError(422, "prompts: empty list", "prompts")
    if body.min_new_tokens > body.max_new_tokens:
        raise ApiError(422, f"min_new_tokens={body.min_new_tokens} exceeds max_new_tokens={body.max_new_tokens}",
                       "min_new_tokens")
    key = "prompt" if body.prompt is not None else "prompts"
    if len(prompts) > limits.max_prompts:
        raise ApiError(422, f"{len(prompts)} prompts in one request; the limit is {limits.max_prompts}", "prompts")
    for i, p in enumerate(prompts):
        field = key if key == "prompt" else f"prompts[{i}]"
        if not p.strip():
            raise ApiError(422, f"{field}: empty prompt", field)
        if len(p) > limits.max_prompt_chars:
            raise ApiError(422, f"{field}: {len(p)} characters; the limit is {limits.max_prompt_chars}", field)
    if body.max_new_tokens > limits.max_new_tokens:
        raise ApiError(422, f"max_new_tokens={body.max_new_tokens} exceeds the limit {limits.max_new_tokens}",
                       "max_new_tokens")
    if body.mode == "beam" and body.num_beams > limits.max_beams:
        raise ApiError(422, f"num_beams={body.num_beams} exceeds the limit {limits.max_beams}", "num_beams")


def check_invert(options: InvertOptions, limits: Limits) -> None:
    if options.steps > limits.max_steps:
        raise ApiError(422, f"steps={options.steps} exceeds the limit {limits.max_steps}", "steps")
    if options.prompt_len > limits.max_prompt_len:
        raise ApiError(422, f"prompt_len={options.prompt_len} exceeds the limit {limits.max_prompt_len}",
                       "prompt_len")
    if len(options.ban) > limits.max_ban_words:
        raise ApiError(422, f"{len(options.ban)} ban entries; the limit is {limits.max_ban_words}", "ban")


def check_image(data: bytes, limits: Limits) -> tuple[int, int]:
    """(width, height) of a decodable image within the limits, else a 4xx naming the field 'image'."""
    from PIL import Image

    from pez_core import ImageError, decode_image

    if len(data) > limits.max_image_bytes:
        raise ApiError(413, f"image has {len(data)} bytes; the limit is {limits.max_image_bytes}", "image")
    try:  # the header alone gives the size: refuse huge images before decoding them
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
        if w * h > limits.max_image_pixels:
            raise ApiError(413, f"image is {w}x{h} = {w * h} pixels; the limit is {limits.max_image_pixels}", "image")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        pass  # decode_image below says precisely what is wrong
    try:
        return decode_image(data, "image", max_pixels=limits.max_image_pixels).size
    except ImageError as e:
        raise ApiError(400, f"image: {e.reason}", "image", type="invalid_image") from e


async def parse_invert(request: Request) -> tuple[bytes, InvertOptions]:
    """The image bytes and options of a multipart upload or a base64 JSON body."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=80)
        except ApiError:
            raise
        except Exception as e:
            raise ApiError(400, f"malformed multipart body ({e})", "body") from e
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise ApiError(422, "image: field required (a file part named 'image')", "image")
        data = await upload.read()
        fields = {k: v for k, v in form.items() if k not in ("image", "ban")}
        ban = [w.strip() for entry in form.getlist("ban") for w in str(entry).split(",") if w.strip()]
        try:
            return data, InvertOptions.model_validate({**fields, "ban": ban})
        except ValidationError as e:
            raise validation_error(e.errors()) from None
    if ctype in ("application/json", ""):
        raw = await request.body()
        try:
            payload = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"request body is not valid JSON ({e})", "body", type="malformed_json") from None
        try:
            req = InvertJSONRequest.model_validate(payload)
        except ValidationError as e:
            raise validation_error(e.errors()) from None
        b64 = req.image_base64
        if b64.startswith("data:"):
            b64 = b64.partition(",")[2]
        try:
            data = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ApiError(400, f"image_base64: not valid base64 ({e})", "image_base64") from None
        return data, InvertOptions(**req.model_dump(exclude={"image_base64"}))
    raise ApiError(415, f"content type {ctype!r} is not accepted: send multipart/form-data with a file "
                   "part 'image', or application/json with 'image_base64'", "Content-Type")


_INVERT_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": InvertJSONRequest.model_json_schema()},
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary", "description": "the image file"},
        "steps": {"type": "integer", "default": 200}, "prompt_len": {"type": "integer", "default": 16},
        "ban": {"type": "array", "items": {"type": "string"}, "description": "repeat, or comma-separated"},
        "seed": {"type": "integer", "default": 0}}}},
}}}
