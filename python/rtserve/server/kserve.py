"""KServe v2 / Open Inference Protocol routes: health, server and model metadata, infer,
and the repository extension (index, load, unload).

Encoders take one BYTES input of texts (any name, any shape; flattened) or INT64
``input_ids`` [batch, seq] with optional right-padded ``attention_mask`` and
``token_type_ids``, and return the FP32 output ``embedding`` [n, dim]. Decoders take one
BYTES input of prompts (``text_input``; sampling settings in the request's ``parameters``:
max_tokens, temperature, top_p, top_k, min_p, repetition_penalty, seed, stop) and return
the generated ``text_output`` BYTES [n], continuously batched with other requests; or take
``input_ids`` [+ ``attention_mask``] and return FP32 ``logits`` [batch, seq, vocab].
Outputs come as JSON data or, when asked (``binary_data_output``, or ``binary_data`` per
output: tritonclient's default), in the binary tensor extension; inputs may come binary too.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.routing import Route

from ..models import DecoderModel, EncoderModel
from ..tokenizer import Encoded
from . import batcher
from .body import read_body, read_json
from .errors import ApiError
from .metrics import MODEL_KEY
from .registry import ModelRegistry
from .responses import JSONResponse
from .scheduler import scheduler_for

_HEADER_LENGTH = "Inference-Header-Content-Length"
_OUTPUT = "embedding"
_INPUT = "text"
_TEXT_INPUT = "text_input"
_TEXT_OUTPUT = "text_output"
_LOGITS = "logits"


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
    ids = [
        {"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]},
        {"name": "attention_mask", "datatype": "INT64", "shape": [-1, -1]},
    ]
    if isinstance(model, EncoderModel):
        metadata["inputs"] = [
            {"name": _INPUT, "datatype": "BYTES", "shape": [-1]},
            *ids,
            {"name": "token_type_ids", "datatype": "INT64", "shape": [-1, -1]},
        ]
        metadata["outputs"] = [{"name": _OUTPUT, "datatype": "FP32", "shape": [-1, model.dim]}]
    else:
        metadata["inputs"] = [{"name": _TEXT_INPUT, "datatype": "BYTES", "shape": [-1]}, *ids]
        metadata["outputs"] = [
            {"name": _TEXT_OUTPUT, "datatype": "BYTES", "shape": [-1]},
            {"name": _LOGITS, "datatype": "FP32", "shape": [-1, -1, model.config.vocab_size]},
        ]
    return JSONResponse(metadata)


async def infer(request: Request) -> Response:
    """Encoders: texts (one BYTES input) or ``input_ids`` [+ ``attention_mask``,
    ``token_type_ids``] -> ``embedding``. Decoders: prompts (one BYTES input; sampling
    settings in the request's ``parameters``, as in /v1/completions) -> ``text_output``, or
    ``input_ids`` [+ ``attention_mask``] -> ``logits`` [batch, seq, vocab]."""
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
    inputs = _read_inputs(body.get("inputs"), binary)
    model = await entry.get()
    if isinstance(model, EncoderModel):
        outputs = await _infer_encoder(request, body, entry, model, inputs)
    else:
        outputs = await _infer_decoder(request, body, entry, model, inputs)
    return _respond(body, entry.name, outputs)


# --- inputs -------------------------------------------------------------------------------

_NUMERIC = {
    "BOOL": np.dtype("bool"), "UINT8": np.dtype("u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}  # fmt: skip


def _read_inputs(inputs: Any, binary: bytes) -> dict[str, Any]:
    """name -> np.ndarray (numeric) or list of str (BYTES), read from JSON data or, for inputs
    with ``binary_data_size``, from the binary section (in the inputs' order)."""
    if not isinstance(inputs, list) or not inputs or not all(isinstance(t, dict) for t in inputs):
        raise ApiError(400, "'inputs' must be a non-empty list of tensors {name, datatype, shape, data}")
    tensors: dict[str, Any] = {}
    offset = 0
    for tensor in inputs:
        name = tensor.get("name")
        if not isinstance(name, str) or not name:
            raise ApiError(400, "every input needs a string 'name'")
        if name in tensors:
            raise ApiError(400, f"input '{name}' is given twice")
        datatype = tensor.get("datatype")
        if datatype != "BYTES" and datatype not in _NUMERIC:
            raise ApiError(400, f"input '{name}': unknown datatype {datatype!r} (BYTES or one of {', '.join(_NUMERIC)})")
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise ApiError(400, f"input '{name}': 'shape' must be a list of non-negative integers")
        count = int(np.prod(shape)) if shape else 1
        parameters = tensor.get("parameters") or {}
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
                raise ApiError(400, f"input '{name}': binary_data_size does not fit the binary data after the JSON header")
            chunk = binary[offset : offset + size]
            offset += size
            if datatype == "BYTES":
                items: Any = _unpack_bytes(chunk)
            else:
                dtype = _NUMERIC[datatype]
                if size != count * dtype.itemsize:
                    raise ApiError(400, f"input '{name}': {size} binary bytes for {count} {datatype} elements")
                items = np.frombuffer(chunk, dtype=dtype)
        else:
            flat = _flatten(tensor.get("data"), name)
            if datatype == "BYTES":
                items = flat
            else:
                dtype = _NUMERIC[datatype]
                kinds = (bool,) if dtype.kind == "b" else (int,) if dtype.kind in "iu" else (int, float)
                if not all(isinstance(v, kinds) and (dtype.kind == "b" or not isinstance(v, bool)) for v in flat):
                    raise ApiError(400, f"input '{name}': data must hold only {datatype} values")
                try:
                    items = np.asarray(flat, dtype=dtype)
                except (TypeError, ValueError, OverflowError):
                    raise ApiError(400, f"input '{name}': a value does not fit {datatype}") from None
        if len(items) != count:
            raise ApiError(400, f"input '{name}': shape {shape} holds {count} elements; the data has {len(items)}")
        if datatype == "BYTES":
            tensors[name] = _strings(name, items)
        else:
            tensors[name] = items.reshape(shape)
    if offset != len(binary):
        raise ApiError(400, f"{len(binary) - offset} bytes of binary data after the JSON header belong to no input")
    return tensors


def _strings(name: str, items: list[Any]) -> list[str]:
    texts = []
    for item in items:
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError:
                raise ApiError(400, f"input '{name}': BYTES elements must be UTF-8 text") from None
        if not isinstance(item, str):
            raise ApiError(400, f"input '{name}': BYTES data must hold strings, got {type(item).__name__}")
        texts.append(item)
    return texts


def _flatten(data: Any, name: str) -> list[Any]:
    if not isinstance(data, list):
        raise ApiError(400, f"input '{name}': 'data' must be a list (or send it binary with binary_data_size)")
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item, name) if isinstance(item, list) else [item])
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


def _texts_or_ids(inputs: dict[str, Any], allowed: tuple[str, ...]) -> tuple[list[str] | None, dict[str, np.ndarray]]:
    """(texts, {}) for one BYTES input, or (None, {input_ids, ...}) for integer id inputs."""
    texts = [v for v in inputs.values() if isinstance(v, list)]
    if texts:
        if len(inputs) != 1:
            raise ApiError(400, "send either one BYTES input of texts or integer 'input_ids' (with 'attention_mask'), not both")
        return texts[0], {}
    if "input_ids" not in inputs:
        raise ApiError(400, f"expected one BYTES input of texts, or 'input_ids' [batch, seq]; got {', '.join(inputs)}")
    unknown = set(inputs) - set(allowed)
    if unknown:
        raise ApiError(400, f"unknown inputs {', '.join(sorted(unknown))}; with input_ids this model takes {', '.join(allowed)}")
    arrays = {}
    ids = inputs["input_ids"]
    if ids.ndim != 2 or ids.dtype.kind not in "iu":
        raise ApiError(400, f"'input_ids' must be INT64 or INT32 [batch, seq], got shape {list(ids.shape)}")
    for name, array in inputs.items():
        if array.dtype.kind not in "iub":
            raise ApiError(400, f"'{name}' must hold integers")
        if array.shape != ids.shape:
            raise ApiError(400, f"'{name}' has shape {list(array.shape)}; input_ids has {list(ids.shape)}")
        arrays[name] = array.astype(np.int64)
    mask = arrays.get("attention_mask")
    if mask is not None:
        if not np.isin(mask, (0, 1)).all():
            raise ApiError(400, "'attention_mask' must hold 0 and 1")
        if (np.diff(mask, axis=1) > 0).any():
            raise ApiError(400, "'attention_mask' must be right-padded: ones, then zeros")
    return None, arrays


# --- models -------------------------------------------------------------------------------


def _parameters(body: dict[str, Any]) -> dict[str, Any]:
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ApiError(400, "'parameters' must be an object")
    return parameters


async def _infer_encoder(
    request: Request, body: dict[str, Any], entry: Any, model: EncoderModel, inputs: dict[str, Any]
) -> list[_Output]:
    texts, arrays = _texts_or_ids(inputs, ("input_ids", "attention_mask", "token_type_ids"))
    if texts is not None:
        if not texts:
            raise ApiError(400, "the input holds no texts")
        truncate = _parameters(body).get("truncate", False)
        if not isinstance(truncate, bool):
            raise ApiError(400, "parameter 'truncate' must be true or false")
        vectors, _ = await batcher.embed_texts(request.app.state, entry, model, texts, truncate)
        return [_Output(_OUTPUT, "FP32", vectors.astype(np.float32))]
    ids = arrays["input_ids"]
    if ids.shape[0] == 0 or ids.shape[1] == 0:
        raise ApiError(400, "'input_ids' is empty")
    if ids.shape[1] > model.max_length:
        raise ApiError(400, f"'input_ids' has {ids.shape[1]} tokens per row; this model takes at most {model.max_length}")
    if ids.min() < 0 or ids.max() >= model.config.vocab_size:
        raise ApiError(400, f"token ids must be in [0, {model.config.vocab_size})")
    mask = arrays.get("attention_mask", np.ones_like(ids))
    types = arrays.get("token_type_ids", np.zeros_like(ids))
    lengths = mask.sum(axis=1)
    if (lengths == 0).any():
        raise ApiError(400, "every row needs at least one token (attention_mask all zero)")
    items = [Encoded(ids[r, :n].tolist(), [1] * int(n), types[r, :n].tolist()) for r, n in enumerate(lengths)]
    vectors = await batcher.embed(request.app.state, entry, model, items)
    return [_Output(_OUTPUT, "FP32", vectors.astype(np.float32))]


async def _infer_decoder(request: Request, body: dict[str, Any], entry: Any, model: DecoderModel, inputs: dict[str, Any]) -> list[_Output]:
    from .openai import _count_generated, _keep_last, _new_sequences, _sampling

    texts, arrays = _texts_or_ids(inputs, ("input_ids", "attention_mask"))
    if texts is None:
        ids = arrays["input_ids"]
        mask = arrays.get("attention_mask")
        try:
            logits = await run_in_threadpool(model.forward, ids, mask)
        except (ValueError, IndexError) as error:
            raise ApiError(400, str(error)) from None
        return [_Output(_LOGITS, "FP32", logits)]
    if not texts:
        raise ApiError(400, "the input holds no prompts")
    parameters = _parameters(body)
    params = _sampling(parameters, default_max_tokens=16)
    limit = getattr(request.app.state, "max_input_tokens", batcher.DEFAULT_MAX_INPUT_TOKENS)
    try:
        sequences = _new_sequences(model, texts, params, _keep_last(parameters), limit)
    except (ValueError, TypeError) as error:
        raise ApiError(400, str(error)) from None
    job = scheduler_for(request.app.state, entry, model).submit(sequences)
    try:
        await job.wait()
    finally:
        job.cancel()
        _count_generated(request, entry, sequences)
    return [_Output(_TEXT_OUTPUT, "BYTES", [s.text for s in sequences])]


# --- outputs ------------------------------------------------------------------------------


@dataclass
class _Output:
    name: str
    datatype: str
    value: Any  # np.ndarray, or a list of str for BYTES

    @property
    def shape(self) -> list[int]:
        return [len(self.value)] if self.datatype == "BYTES" else list(self.value.shape)


def _respond(body: dict[str, Any], model_name: str, outputs: list[_Output]) -> Response:
    """The infer response: the requested outputs (all when ``outputs`` is absent), each as
    JSON data or, when asked, in the binary section."""
    requested = body.get("outputs")
    binary_default = _flag(body.get("parameters"), "binary_data_output")
    wanted: dict[str, bool] = {}
    if requested is None:
        wanted = {o.name: binary_default for o in outputs}
    else:
        if not isinstance(requested, list) or not all(isinstance(r, dict) and isinstance(r.get("name"), str) for r in requested):
            raise ApiError(400, "'outputs' must be a list of {name, parameters}")
        names = {o.name for o in outputs}
        for r in requested:
            if r["name"] not in names:
                raise ApiError(400, f"unknown output '{r['name']}'; this request gives {', '.join(sorted(names))}")
            parameters = r.get("parameters")
            wanted[r["name"]] = _flag(parameters, "binary_data") if _has(parameters, "binary_data") else binary_default
    response: dict[str, Any] = {"model_name": model_name, "model_version": "1", "outputs": []}
    if isinstance(body.get("id"), str):
        response["id"] = body["id"]
    payloads = []
    for output in outputs:
        if output.name not in wanted:
            continue
        entry: dict[str, Any] = {"name": output.name, "datatype": output.datatype, "shape": output.shape}
        if wanted[output.name]:
            if output.datatype == "BYTES":
                data = b"".join(struct.pack("<I", len(b)) + b for b in (t.encode("utf-8") for t in output.value))
            else:
                data = np.ascontiguousarray(output.value, dtype=_NUMERIC[output.datatype]).tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            payloads.append(data)
        else:
            entry["data"] = list(output.value) if output.datatype == "BYTES" else output.value.reshape(-1).tolist()
        response["outputs"].append(entry)
    if not payloads:
        return JSONResponse(response)
    header = json.dumps(response).encode()
    return Response(
        header + b"".join(payloads),
        media_type="application/octet-stream",
        headers={_HEADER_LENGTH: str(len(header))},
    )


def _has(parameters: Any, key: str) -> bool:
    return isinstance(parameters, dict) and key in parameters


def _flag(parameters: Any, key: str) -> bool:
    return isinstance(parameters, dict) and parameters.get(key) is True
