"""KServe v2 / Open Inference Protocol routes: health, server and model metadata, infer.

Encoders take one BYTES input of texts (any name, any shape; flattened) and return the
FP32 output ``embedding`` [n, dim], as JSON data or, when asked (``binary_data_output``,
tritonclient's default), in the binary tensor extension. Inputs may come binary too.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..models import EncoderModel
from . import batcher
from .body import read_body, read_json
from .errors import ApiError
from .metrics import MODEL_KEY
from .registry import ModelRegistry

_HEADER_LENGTH = "Inference-Header-Content-Length"
_OUTPUT = "embedding"
_INPUT = "text"


def routes() -> list[Route]:
    model = "/v2/models/{name}"
    version = "/v2/models/{name}/versions/{version}"
    return [
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        *(Route(prefix, model_metadata, methods=["GET"]) for prefix in (model, version)),
        *(Route(prefix + "/ready", model_ready, methods=["GET"]) for prefix in (model, version)),
        *(Route(prefix + "/infer", infer, methods=["POST"]) for prefix in (model, version)),
        Route("/v2/repository/index", repository_index, methods=["POST"]),
        Route("/v2/repository/models/{name}/load", repository_load, methods=["POST"]),
        Route("/v2/repository/models/{name}/unload", repository_unload, methods=["POST"]),
    ]


def _registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.registry
    return registry


async def server_metadata(request: Request) -> JSONResponse:
    from .. import cli

    return JSONResponse({"name": "rtserve", "version": cli._version(), "extensions": ["binary_tensor_data"]})


async def live(request: Request) -> Response:
    return Response(status_code=200)


async def ready(request: Request) -> Response:
    """Ready when every served model is loaded (the CLI loads them before it listens) or was
    unloaded on purpose (idle, or the repository API): those load again on their next request."""
    loaded = all(entry.loaded or entry.unloaded for entry in _registry(request))
    return Response(status_code=200 if loaded else 503)


async def model_ready(request: Request) -> Response:
    entry = _registry(request).entry(request.path_params["name"])
    return Response(status_code=200 if entry.loaded else 503)


async def repository_index(request: Request) -> JSONResponse:
    """The repository extension's index: every served model, its state; ``{"ready": true}``
    in the body lists only the loaded ones."""
    raw = await read_body(request)
    body = await read_json(request, raw) if raw.strip() else {}
    only_ready = body.get("ready") is True
    index = []
    for entry in _registry(request):
        if only_ready and not entry.loaded:
            continue
        state = "READY" if entry.loaded else "UNAVAILABLE"
        reason = "" if entry.loaded else ("unloaded" if entry.unloaded else "not loaded yet")
        index.append({"name": entry.name, "version": "1", "state": state, "reason": reason})
    return JSONResponse(index)


async def repository_load(request: Request) -> Response:
    entry = _registry(request).entry(request.path_params["name"])
    await entry.get()
    return JSONResponse({})


async def repository_unload(request: Request) -> Response:
    """Unloads the model (after its running and waiting requests); its next request loads it again."""
    entry = _registry(request).entry(request.path_params["name"])
    await entry.unload()
    return JSONResponse({})


async def model_metadata(request: Request) -> JSONResponse:
    entry = _registry(request).entry(request.path_params["name"])
    model = await entry.get()
    metadata: dict[str, Any] = {"name": entry.name, "versions": ["1"], "platform": "rtserve"}
    if isinstance(model, EncoderModel):
        metadata["inputs"] = [{"name": _INPUT, "datatype": "BYTES", "shape": [-1]}]
        metadata["outputs"] = [{"name": _OUTPUT, "datatype": "FP32", "shape": [-1, model.dim]}]
    else:
        metadata["inputs"] = []
        metadata["outputs"] = []
    return JSONResponse(metadata)


async def infer(request: Request) -> Response:
    entry = _registry(request).entry(request.path_params["name"])
    request.scope[MODEL_KEY] = entry.name
    raw = await read_body(request)
    header_length = request.headers.get(_HEADER_LENGTH)
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(raw):
            raise ApiError(400, f"{_HEADER_LENGTH} must be an integer no larger than the body")
        body = await read_json(request, raw[: int(header_length)])
        binary = raw[int(header_length) :]
    else:
        body = await read_json(request, raw)
        binary = b""
    model = await entry.get()
    if not isinstance(model, EncoderModel):
        raise ApiError(400, f"KServe infer serves encoder models for now; use /v1/completions for '{entry.name}'")
    texts = _texts(body.get("inputs"), binary)
    if not texts:
        raise ApiError(400, "the input holds no texts")
    items = await batcher.tokenize(entry, model, texts)
    vectors = await batcher.embed(request.app.state, entry, model, items)
    want_binary = _wants_binary(body)
    output: dict[str, Any] = {"name": _OUTPUT, "datatype": "FP32", "shape": list(vectors.shape)}
    response: dict[str, Any] = {"model_name": entry.name, "model_version": "1", "outputs": [output]}
    if isinstance(body.get("id"), str):
        response["id"] = body["id"]
    if not want_binary:
        output["data"] = vectors.reshape(-1).tolist()
        return JSONResponse(response)
    payload = vectors.astype("<f4").tobytes()
    output["parameters"] = {"binary_data_size": len(payload)}
    header = json.dumps(response).encode()
    return Response(
        header + payload,
        media_type="application/octet-stream",
        headers={_HEADER_LENGTH: str(len(header))},
    )


def _texts(inputs: Any, binary: bytes) -> list[str]:
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ApiError(400, "'inputs' must be a list with one tensor: the BYTES texts")
    tensor = inputs[0]
    if tensor.get("datatype") != "BYTES":
        raise ApiError(400, f"input '{tensor.get('name')}' must have datatype BYTES, got {tensor.get('datatype')!r}")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ApiError(400, "input 'shape' must be a list of non-negative integers")
    parameters = tensor.get("parameters") or {}
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if size is not None:
        if not isinstance(size, int) or size != len(binary):
            raise ApiError(400, "binary_data_size does not match the binary data after the JSON header")
        items = _unpack_bytes(binary)
    else:
        items = _flatten(tensor.get("data"))
    if len(items) != int(np.prod(shape)):
        raise ApiError(400, f"input shape {shape} holds {int(np.prod(shape))} elements; the data has {len(items)}")
    texts = []
    for item in items:
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError:
                raise ApiError(400, "BYTES elements must be UTF-8 text") from None
        if not isinstance(item, str):
            raise ApiError(400, f"BYTES data must hold strings, got {type(item).__name__}")
        texts.append(item)
    return texts


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        raise ApiError(400, "input 'data' must be a list (or send it binary with binary_data_size)")
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item) if isinstance(item, list) else [item])
    return flat


def _unpack_bytes(binary: bytes) -> list[bytes]:
    """The binary BYTES encoding: each element a 4-byte little-endian length and its bytes."""
    items = []
    offset = 0
    while offset < len(binary):
        if offset + 4 > len(binary):
            raise ApiError(400, "truncated BYTES element in the binary data")
        (length,) = struct.unpack_from("<I", binary, offset)
        offset += 4
        if offset + length > len(binary):
            raise ApiError(400, "truncated BYTES element in the binary data")
        items.append(binary[offset : offset + length])
        offset += length
    return items


def _wants_binary(body: dict[str, Any]) -> bool:
    outputs = body.get("outputs")
    if isinstance(outputs, list):
        for output in outputs:
            if isinstance(output, dict) and output.get("name") == _OUTPUT:
                parameters = output.get("parameters") or {}
                return isinstance(parameters, dict) and parameters.get("binary_data") is True
    parameters = body.get("parameters") or {}
    return isinstance(parameters, dict) and parameters.get("binary_data_output") is True
