"""API docs that work offline: ``/openapi.json`` and a small ``/docs`` page rendered from it.

FastAPI's Swagger UI and ReDoc pages load their JavaScript and CSS from a CDN, and no local copy of
those assets is installed here (no ``swagger-ui-bundle``), so both are turned off: ``/docs`` is a
plain HTML page (no scripts, nothing fetched) listing each operation, its summary and its request
and response schemas, and ``/openapi.json`` is the full spec for any OpenAPI tool. When a bearer
token is configured the spec declares it (``components.securitySchemes.bearerAuth``) and marks every
``/v1/*`` operation as needing it.
"""

from __future__ import annotations

import html
import json

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse

BEARER = {"bearerAuth": {"type": "http", "scheme": "bearer",
                         "description": "Authorization: Bearer <token> (the token the operator configured)"}}


def openapi_spec(api: FastAPI, auth_enabled: bool) -> dict:
    spec = get_openapi(title=api.title, version=api.version, description=api.description, routes=api.routes)
    if auth_enabled:
        spec.setdefault("components", {})["securitySchemes"] = BEARER
        for path, operations in spec["paths"].items():
            if path.startswith("/v1/"):
                for op in operations.values():
                    op["security"] = [{"bearerAuth": []}]
    return spec


def docs_page(spec: dict) -> str:
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(spec['info']['title'])} API</title>",
             "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}pre{background:#f4f4f4;"
             "padding:.5em;overflow:auto}</style></head><body>",
             f"<h1>{esc(spec['info']['title'])} {esc(spec['info']['version'])}</h1>",
             f"<pre>{esc(spec['info'].get('description', ''))}</pre>",
             "<p>The full OpenAPI spec: <a href='openapi.json'>openapi.json</a> (load it in any OpenAPI tool).</p>"]
    if "securitySchemes" in spec.get("components", {}):
        parts.append("<p><b>Authentication:</b> <code>/v1/*</code> needs <code>Authorization: Bearer "
                     "&lt;token&gt;</code>.</p>")
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            parts.append(f"<h2><code>{esc(method.upper())} {esc(path)}</code></h2><p>{esc(op.get('summary', ''))}</p>")
            for ctype, media in op.get("requestBody", {}).get("content", {}).items():
                schema = json.dumps(media.get("schema", {}), indent=1)
                parts.append(f"<details><summary>request body: {esc(ctype)}</summary>"
                             f"<pre>{esc(schema)}</pre></details>")
    parts.append("</body></html>")
    return "".join(parts)


def install_docs(api: FastAPI, auth_enabled: bool) -> None:
    cache: dict = {}

    def openapi() -> dict:
        if "spec" not in cache:
            cache["spec"] = openapi_spec(api, auth_enabled)
        return cache["spec"]

    api.openapi = openapi

    @api.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(docs_page(openapi()))
