"""The starlette app: OpenAI routes under /v1, KServe v2 routes under /v2, API key check.

Example::

    app = create_app(ModelRegistry.from_specs(["minilm"]), api_key="secret")
    uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import hmac

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from . import kserve, openai
from .errors import ApiError, error_response, handle_api_error, handle_http_error, handle_unexpected_error
from .registry import ModelRegistry

#: paths a load balancer or Kubernetes probes without credentials
_OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})

DEFAULT_MAX_REQUEST_BYTES = 1 << 20


def create_app(
    registry: ModelRegistry, *, api_key: str | None = None, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
) -> Starlette:
    """The server app over ``registry``; with ``api_key``, requests need ``Authorization: Bearer KEY``."""
    app = Starlette(
        routes=[*openai.routes(), *kserve.routes()],
        exception_handlers={
            ApiError: handle_api_error,
            HTTPException: handle_http_error,
            Exception: handle_unexpected_error,
        },
    )
    app.state.registry = registry
    app.state.max_request_bytes = max_request_bytes
    if api_key:
        app.add_middleware(_ApiKey, api_key=api_key)
    return app


class _ApiKey:
    """Refuses requests without ``Authorization: Bearer <key>`` (401, in the API's error shape)."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in _OPEN_PATHS:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                message = "Missing or wrong API key: send 'Authorization: Bearer <key>'"
                await error_response(scope["path"], ApiError(401, message, code="invalid_api_key"))(scope, receive, send)
                return
        await self.app(scope, receive, send)
