"""The HTTP ingress: a FastAPI app built per replica (``__serve_build_asgi_app__``), so its routes and
middleware see the replica's model handles, limits and auth.

Order of checks on a request: body size (413, before the body is read) and body time (408 when it
stalls), bearer token (401, before any validation detail is revealed), content type (415), request
shape (serve/bodies.py: 400 malformed JSON, 422 naming each bad field, strict types), the operator's
limits (422/413), then the model call under the ingress' own time limit (504 JSON, shorter than
Serve's ``request_timeout_s``), with full model queues answered 503 + Retry-After instead of waiting
without bound. No error message repeats a value the client sent.
"""

from __future__ import annotations

import asyncio
import logging
import time

from fastapi import FastAPI, Request
from ray import serve
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from pez_core.budgets import BUDGETS
from pez_core.projection import ban_words

from .auth import BearerAuth, load_token
from .bodies import check_image, parse_invert, read_json
from .docs import install_docs
from .errors import ApiError, BodyLimit, error_response, install_error_handlers
from .schemas import ErrorResponse, InvertJSONRequest, InvertOptions, InvertResponse, RewriteRequest, RewriteResponse
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
            raise ApiError(e["status"], e["message"], e.get("field"), type=e.get("type"),
                           headers={"Retry-After": str(retry_after)} if e["status"] == 503 else None)
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
    api = FastAPI(title="promptmine", version="0.1.0", description=DESCRIPTION, docs_url=None, redoc_url=None)
    install_error_handlers(api)
    install_docs(api, ing.auth.enabled)

    api.add_middleware(AuthGate, auth=lambda: ing.auth)
    api.add_middleware(BodyLimit, limit=lambda: ing.limits.max_body_bytes,  # outermost: runs first
                       timeout=lambda: ing.limits.body_timeout_s)

    @api.get("/healthz", summary="Liveness of the HTTP ingress")
    async def healthz() -> dict:
        return {"status": "ok"}

    @api.get("/v1/models", summary="Models, limits and batching statistics")
    async def models() -> dict:
        retry = ing.limits.retry_after_s
        rewrite, invert = await asyncio.gather(ing.rewrite("describe", 10, retry, pass_deadline=False),
                                               ing.invert("describe", 10, retry, pass_deadline=False))
        return {"rewrite": rewrite, "invert": invert, "limits": ing.limits.model_dump(), "auth": ing.auth.enabled}

    @api.post("/v1/rewrite", response_model=RewriteResponse, responses={**_ERRORS, 415: {"model": ErrorResponse}},
              summary="Rewrite plain prompts into detailed text-to-image prompts", openapi_extra=_REWRITE_BODY)
    async def rewrite(request: Request) -> dict:
        start = time.perf_counter()
        limits = ing.limits
        body = await read_json(request, RewriteRequest)
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
                               ban_substring=options.ban_substring, seed=options.seed,
                               max_pixels=limits.max_image_pixels, early_stop=options.early_stop,
                               pez_method=options.method, fluency=options.fluency)
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
        raise ApiError(422, "min_new_tokens: exceeds max_new_tokens", "min_new_tokens")
    key = "prompt" if body.prompt is not None else "prompts"
    if len(prompts) > limits.max_prompts:
        raise ApiError(422, f"prompts: more than the limit of {limits.max_prompts} in one request", "prompts")
    for i, p in enumerate(prompts):
        field = key if key == "prompt" else f"prompts[{i}]"
        if not p.strip():
            raise ApiError(422, f"{field}: empty prompt", field)
        if len(p) > limits.max_prompt_chars:
            raise ApiError(422, f"{field}: over the limit of {limits.max_prompt_chars} characters", field)
    if body.max_new_tokens > limits.max_new_tokens:
        raise ApiError(422, f"max_new_tokens: over the limit of {limits.max_new_tokens}", "max_new_tokens")
    if body.mode == "beam" and body.num_beams > limits.max_beams:
        raise ApiError(422, f"num_beams: over the limit of {limits.max_beams}", "num_beams")


def check_invert(options: InvertOptions, limits: Limits) -> None:
    if options.steps > limits.max_steps:
        raise ApiError(422, f"steps: over the limit of {limits.max_steps}", "steps")
    if options.prompt_len > limits.max_prompt_len:
        raise ApiError(422, f"prompt_len: over the limit of {limits.max_prompt_len}", "prompt_len")
    check_ban(options.ban, limits)
    check_ban(options.ban_substring, limits, "ban_substring")


def check_ban(ban: list[str], limits: Limits, name: str = "ban") -> None:
    """Bound the ban list before the model builds a candidate table for it (one vocabulary scan per word)."""
    for i, entry in enumerate(ban):
        if len(entry) > limits.max_ban_entry_chars:
            raise ApiError(422, f"{name}[{i}]: over the limit of {limits.max_ban_entry_chars} characters",
                           f"{name}[{i}]")
        if len(entry.split()) > limits.max_ban_entry_words:
            raise ApiError(422, f"{name}[{i}]: over the limit of {limits.max_ban_entry_words} words", f"{name}[{i}]")
    if sum(len(entry) for entry in ban) > limits.max_ban_chars:
        raise ApiError(422, f"{name}: over the limit of {limits.max_ban_chars} characters in all", name)
    if len(ban_words(ban)) > limits.max_ban_words:
        raise ApiError(422, f"{name}: over the limit of {limits.max_ban_words} words", name)


_REWRITE_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": RewriteRequest.model_json_schema()}}}}

_INVERT_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": InvertJSONRequest.model_json_schema()},
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary", "description": "the image file"},
        "steps": {"type": "integer", "default": BUDGETS["serve"].steps},
        "prompt_len": {"type": "integer", "default": BUDGETS["serve"].prompt_len},
        "ban": {"type": "array", "items": {"type": "string"}, "description": "repeat, or comma-separated"},
        "ban_substring": {"type": "array", "items": {"type": "string"}, "description": "repeat, or comma-separated"},
        "seed": {"type": "integer", "default": 0},
        "early_stop": {"type": "boolean", "default": True},
        "method": {"type": "string", "enum": ["pez", "autoprompt-sgd", "fluentprompt"], "default": "pez"},
        "fluency": {"type": "number", "description": "fluency weight (default: the server's)"}}}},
}}}
