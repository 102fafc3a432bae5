"""A middleware for Serve's HTTP proxy: its own errors become the API's JSON, and clients cannot
lift its time limit.

Serve's proxy answers some requests itself, before any replica runs: a plain-text 503 when the
ingress' queue is full (``max_queued_requests``), a plain-text 408 past ``request_timeout_s``. And it
honours two request headers meant for a trusted load balancer in front of it:
``x-request-timeout-seconds`` (0 turns the time limit off) and ``x-request-disconnect-disabled``.
Ray 2.60 installs proxy middlewares from ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` (a function
returning a list of Starlette ``Middleware``), read when the proxy actor starts: it must be in the
environment of the Ray nodes before Ray starts. ``promptmine serve`` sets it for its local Ray; for
an existing cluster or KubeRay set ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serve.proxy:middlewares``
in the nodes' environment (and have this package importable there).
"""

from __future__ import annotations

import json

from starlette.middleware import Middleware

ENV_VAR = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
IMPORT_PATH = "serve.proxy:middlewares"
CLIENT_HEADERS_DROPPED = (b"x-request-timeout-seconds", b"x-request-disconnect-disabled")
_REWRITTEN = {408: ("request_timeout", "the request did not finish within the server's time limit"),
              429: ("overloaded", "the server is at capacity; retry later"),
              503: ("overloaded", "the server is at capacity; retry later")}


class ProxyErrorsAsJSON:
    """ASGI middleware: drops the proxy's trust headers from client requests; turns the proxy's
    plain-text 408 / 429 / 503 into ``{"error": {"type", "message", "field"}}`` (headers such as
    Retry-After kept). Responses of the app (JSON already) pass unchanged."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope = {**scope, "headers": [(k, v) for k, v in scope.get("headers", ()) if k not in CLIENT_HEADERS_DROPPED]}
        rewriting = None

        async def guarded_send(message):
            nonlocal rewriting
            if message["type"] == "http.response.start" and message["status"] in _REWRITTEN:
                headers = [(k, v) for k, v in message.get("headers", ())]
                ctype = next((v for k, v in headers if k.lower() == b"content-type"), b"")
                if not ctype.startswith(b"application/json"):
                    rewriting = message
                    return None
            if rewriting is not None and message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return None  # the proxy's text, dropped
                type_, text = _REWRITTEN[rewriting["status"]]
                body = json.dumps({"error": {"type": type_, "message": text, "field": None}}).encode()
                keep = [(k, v) for k, v in rewriting.get("headers", ())
                        if k.lower() not in (b"content-type", b"content-length")]
                await send({**rewriting, "headers": keep + [(b"content-type", b"application/json"),
                                                            (b"content-length", str(len(body)).encode())]})
                rewriting = None
                return await send({"type": "http.response.body", "body": body})
            return await send(message)

        await self.app(scope, receive, guarded_send)


def middlewares() -> list[Middleware]:
    """What ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` points at."""
    return [Middleware(ProxyErrorsAsJSON)]
