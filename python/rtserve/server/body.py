"""Reading request bodies: the size limit (413) and JSON parsing (400)."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from .errors import ApiError


async def read_body(request: Request) -> bytes:
    """The request body, refused with 413 past the server's ``max_request_bytes``."""
    limit: int = request.app.state.max_request_bytes
    too_large = ApiError(413, f"The request body is larger than the server's limit of {limit} bytes", code="request_too_large")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, body: bytes | None = None) -> dict[str, Any]:
    """The request body as a JSON object; 400 with the parser's message otherwise."""
    if body is None:
        body = await read_body(request)
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(400, f"The request body is not valid JSON: {error}", code="invalid_json") from None
    if not isinstance(parsed, dict):
        raise ApiError(400, f"The request body must be a JSON object, got {type(parsed).__name__}", code="invalid_json")
    return parsed
