"""Optional bearer-token authentication.

The token comes from an environment variable (default ``PROMPTMINE_API_TOKEN``) or a file (a mounted
secret); with neither, the API is open. It is compared in constant time (``hmac.compare_digest``) and
is never logged, returned or put in an error message: only its presence is reported.
"""

from __future__ import annotations

import hmac
import logging
import os
from pathlib import Path

from .errors import ApiError

log = logging.getLogger(__name__)

OPEN_PATHS = ("/healthz", "/docs", "/redoc", "/openapi.json")  # answered without a token


def load_token(env_var: str | None, file: str | None) -> bytes | None:
    """The configured token (file first, then the environment), or None for an open API."""
    if file:
        try:
            token = Path(file).read_text().strip()
        except OSError as e:
            raise ValueError(f"auth_token_file {file!r}: cannot read ({e.strerror or e})") from None
        if not token:
            raise ValueError(f"auth_token_file {file!r} is empty")
        return token.encode()
    token = os.environ.get(env_var or "", "").strip()
    return token.encode() if token else None


class BearerAuth:
    """Checks ``Authorization: Bearer <token>``; a no-op when no token is configured."""

    def __init__(self, token: bytes | None):
        self._token = token

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def __repr__(self) -> str:  # never show the token, even in a debugger or a traceback
        return f"BearerAuth(enabled={self.enabled})"

    def check(self, path: str, authorization: str | None) -> None:
        if self._token is None or path in OPEN_PATHS:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise ApiError(401, "missing bearer token: send 'Authorization: Bearer <token>'", "Authorization",
                           type="unauthorized", headers={"WWW-Authenticate": 'Bearer realm="promptmine"'})
        if not hmac.compare_digest(given.strip().encode(), self._token):
            raise ApiError(401, "invalid bearer token", "Authorization", type="unauthorized",
                           headers={"WWW-Authenticate": 'Bearer realm="promptmine", error="invalid_token"'})
