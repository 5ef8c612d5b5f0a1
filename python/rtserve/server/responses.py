"""JSON responses rendered with orjson.

Starlette's ``JSONResponse`` renders with the standard library's ``json``: for one
all-MiniLM-L6-v2 embedding (384 floats) that took 80-165 µs per response on this project's
2-core machine, a large share of the server's own work per one-text request, taken from
the cores the model runs on. orjson renders the same document in about 10 µs. The bytes
differ only in float spelling (both shortest round-trip forms) and in writing non-ASCII
text as UTF-8, which the standard library also does with ``ensure_ascii=False`` (as
Starlette calls it); NaN and infinity become ``null`` where Starlette would fail the request.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

__all__ = ["JSONResponse"]


class JSONResponse(Response):
    """``starlette.responses.JSONResponse`` with an orjson renderer (numpy arrays allowed)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
