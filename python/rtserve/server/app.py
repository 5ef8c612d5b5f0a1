"""The starlette app: OpenAI routes under /v1, KServe v2 routes under /v2, API key check.

Example::

    app = create_app(ModelRegistry.from_specs(["minilm"]), api_key="secret")
    uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from . import kserve, openai
from .batcher import DEFAULT_MAX_BATCH_TOKENS, DEFAULT_MAX_INPUT_TOKENS, DEFAULT_MAX_QUEUE
from .errors import ApiError, error_response, handle_api_error, handle_http_error, handle_unexpected_error
from .metrics import Metrics, RequestMetrics, metrics_endpoint
from .registry import ModelRegistry
from .scheduler import DEFAULT_MAX_SEQUENCES

#: paths a load balancer or Kubernetes probes without credentials
_OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})

DEFAULT_MAX_REQUEST_BYTES = 1 << 20


def create_app(
    registry: ModelRegistry,
    *,
    api_key: str | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
    max_queue: int = DEFAULT_MAX_QUEUE,
    max_batch_sequences: int = DEFAULT_MAX_SEQUENCES,
    max_input_tokens: int = DEFAULT_MAX_INPUT_TOKENS,
    idle_unload: float | None = None,
    instances: int | None = None,
    pin: bool = True,
) -> Starlette:
    """The server app over ``registry``; with ``api_key``, requests need ``Authorization: Bearer KEY``.

    Embedding requests are batched per model up to ``max_batch_tokens`` tokens; past
    ``max_queue`` waiting requests a model answers 429. Decoders advance up to
    ``max_batch_sequences`` sequences per step (continuous batching). A request may bring
    ``max_input_tokens`` tokens (all its inputs or prompts together); more gets 400. ``GET /metrics``: Prometheus text.
    With ``idle_unload`` (seconds), a model with no request for that long is unloaded; its
    next request loads it again. An encoder on the CPU runs as ``instances`` model instances
    (default :func:`~.batcher.default_instances`), each pinned to CPUs of its own with ``pin``.
    """
    if instances is not None and instances < 1:
        raise ValueError(f"instances must be at least 1, got {instances}")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(_unload_idle(registry, idle_unload)) if idle_unload else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
            for entry in registry:
                if entry.batcher is not None:
                    entry.batcher.stop()

    routes = [*openai.routes(), *kserve.routes(), Route("/metrics", metrics_endpoint, methods=["GET"])]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            ApiError: handle_api_error,
            HTTPException: handle_http_error,
            Exception: handle_unexpected_error,
        },
    )
    app.state.registry = registry
    app.state.max_request_bytes = max_request_bytes
    app.state.max_batch_tokens = max_batch_tokens
    app.state.max_queue = max_queue
    app.state.max_batch_sequences = max_batch_sequences
    app.state.max_input_tokens = max_input_tokens
    app.state.idle_unload = idle_unload
    app.state.instances = instances
    app.state.pin = pin
    app.state.metrics = Metrics()
    if api_key:
        app.add_middleware(_ApiKey, api_key=api_key)
    # added last, so outermost: it also counts the 401s of the key check
    app.add_middleware(RequestMetrics, metrics=app.state.metrics, routes=routes, registry=registry)
    return app


async def _unload_idle(registry: ModelRegistry, idle_seconds: float) -> None:
    """Every little while, unloads the models that had no request for ``idle_seconds``."""
    log = logging.getLogger("rtserve.server")
    while True:
        await asyncio.sleep(min(max(idle_seconds / 4, 0.05), 5.0))
        now = time.monotonic()
        for entry in registry:
            if entry.loaded and not entry.busy and now - entry.last_used >= idle_seconds:
                if await entry.unload():
                    log.warning("unloaded %s after %.0f s idle", entry.name, now - entry.last_used)


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
