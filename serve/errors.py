"""Every error the API answers is JSON: ``{"error": {"type", "message", "field", "errors"}}``.

``install_error_handlers(app)`` turns FastAPI's validation errors (422), malformed JSON (400),
Starlette's HTTP errors (404, 405) and unexpected exceptions (500, details only in the log) into that
shape; the endpoints raise ``ApiError`` for everything else. ``BodyLimit`` refuses request bodies over
a size before they are read into memory (413) and bodies that do not arrive in time (408).
"""

from __future__ import annotations

import asyncio
import json
import logging

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

_HTTP_TYPES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 408: "request_timeout", 413: "payload_too_large",
               415: "unsupported_media_type", 422: "validation_error", 429: "overloaded", 503: "overloaded",
               504: "timeout"}


class ApiError(Exception):
    """An error answered as JSON with ``status``; ``field`` names the input at fault."""

    def __init__(self, status: int, message: str, field: str | None = None, *, type: str | None = None,
                 headers: dict | None = None, errors: list[dict] | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field
        self.type = type or _HTTP_TYPES.get(status, "error")
        self.headers, self.errors = headers or {}, errors


def error_response(status: int, type: str, message: str, field: str | None = None,
                   errors: list[dict] | None = None, headers: dict | None = None) -> JSONResponse:
    body = {"type": type, "message": message, "field": field}
    if errors is not None:
        body["errors"] = errors
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def field_path(loc) -> str:
    """('body', 'prompts', 2) -> 'prompts[2]'; the 'body'/'query' prefix is dropped."""
    parts = [p for p in loc if p not in ("body", "query", "path", "header", "form")]
    out = ""
    for p in parts:
        p = p if isinstance(p, int) else str(p)[:64]  # an unknown key is the client's: keep it short
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out or "body"


def validation_errors(errors) -> list[dict]:
    """pydantic / FastAPI error dicts -> [{"field", "problem"}] (input values are not echoed)."""
    out = []
    for e in errors:
        problem = e.get("msg", "invalid")
        if e.get("type") == "missing":
            problem = "field required"
        elif e.get("type") == "extra_forbidden":
            problem = "unknown field"
        out.append({"field": field_path(e.get("loc", ())), "problem": problem.removeprefix("Value error, ")})
    return out


def validation_error(errors, *, status: int = 422) -> ApiError:
    """An ApiError naming every bad field; malformed JSON becomes a 400."""
    errors = list(errors)
    for e in errors:
        if e.get("type") == "json_invalid":
            where = e.get("ctx", {}).get("error", "")
            return ApiError(400, f"request body is not valid JSON ({where})".replace(" ()", ""), "body",
                            type="malformed_json")
    items = validation_errors(errors)
    first = items[0] if items else {"field": "body", "problem": "invalid"}
    more = f" (and {len(items) - 1} more)" if len(items) > 1 else ""
    return ApiError(status, f"{first['field']}: {first['problem']}{more}", first["field"], errors=items)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.type, exc.message, exc.field, exc.errors, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return await _api_error(request, validation_error(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        field = "body" if exc.status_code in (408, 413) else None  # BodyLimit's streaming checks
        return error_response(exc.status_code, _HTTP_TYPES.get(exc.status_code, "error"), message, field,
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal error; see the server log")


class BodyLimit:
    """ASGI middleware: 413 for a body over ``limit()`` bytes, by Content-Length or while streaming,
    and 408 when the body is not complete ``timeout()`` seconds after the app first asks for it (a
    client that sends the headers and half a body, then stalls or trickles).

    The streaming checks raise an HTTPException, which FastAPI's body parsing re-raises as it is, so
    the JSON handler above answers it.
    """

    def __init__(self, app, limit, timeout):
        # limit: () -> int, timeout: () -> float, so they follow runtime reconfiguration
        self.app, self.limit, self.timeout = app, limit, timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit()
        for key, value in scope.get("headers", ()):
            if key == b"content-length" and value.isdigit() and int(value) > limit:
                response = error_response(413, "payload_too_large", f"request body exceeds {limit} bytes", "body")
                return await response(scope, receive, send)
        seen, done, deadline = 0, False, None

        async def guarded_receive():
            nonlocal seen, done, deadline
            if done:  # after the body: only a disconnect can come, and waiting for it is not ours to bound
                return await receive()
            loop = asyncio.get_running_loop()
            if deadline is None:
                deadline = loop.time() + self.timeout()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
            except asyncio.TimeoutError:
                raise HTTPException(408, f"request body not received within {self.timeout():g} s") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                done = not message.get("more_body", False)
                if seen > limit:
                    raise HTTPException(413, f"request body exceeds {limit} bytes")
            return message

        await self.app(scope, guarded_receive, send)
