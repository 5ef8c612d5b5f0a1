"""HTTP errors in each API's own body shape (OpenAI ``{"error": {...}}``, KServe ``{"error": "..."}``)."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request

from .responses import JSONResponse

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}


class ApiError(Exception):
    """A request the server refuses: ``status`` plus a message a client can act on."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_value" if param else None)


def error_response(path: str, error: ApiError) -> JSONResponse:
    """The error body for the API that ``path`` belongs to (KServe under /v2, else OpenAI)."""
    headers = dict(error.headers or {})
    if error.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if path == "/v2" or path.startswith("/v2/"):
        return JSONResponse({"error": error.message}, status_code=error.status, headers=headers)
    body = {
        "error": {
            "message": error.message,
            "type": _OPENAI_TYPES.get(error.status, "server_error"),
            "param": error.param,
            "code": error.code,
        }
    }
    return JSONResponse(body, status_code=error.status, headers=headers)


async def handle_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(request.url.path, exc)


async def handle_http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (no such route, wrong method) in the API's shape."""
    assert isinstance(exc, HTTPException)
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return error_response(request.url.path, ApiError(exc.status_code, message))


async def handle_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug or a model failure: 500 with the exception's text, logged with its traceback."""
    logging.getLogger("rtserve.server").error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(request.url.path, ApiError(500, f"internal error: {type(exc).__name__}: {exc}"))
