"""OpenAI-compatible routes: /v1/models, /v1/embeddings, /v1/completions, /v1/chat/completions.

Embedding requests are batched across clients per model (see :mod:`.batcher`). Decoder
requests share one continuously batched decode loop per model (see :mod:`.scheduler`):
each request's sequences join the running batch between two steps and leave when they
finish; a streaming client that disconnects cancels its sequences.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from ..models import DecoderModel, EncoderModel
from ..tokenizer import Encoded
from . import batcher
from .scheduler import Generation, scheduler_for
from .body import read_json
from .errors import bad_request
from .metrics import MODEL_KEY
from .registry import ModelRegistry, ServedModel
from .responses import JSONResponse

_STARTED = int(time.time())


def routes() -> list[Route]:
    return [
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{name:path}", get_model, methods=["GET"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ]


def _registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.registry
    return registry


def _model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": _STARTED, "owned_by": "rtserve"}


async def list_models(request: Request) -> JSONResponse:
    return JSONResponse({"object": "list", "data": [_model_card(name) for name in _registry(request).names()]})


async def get_model(request: Request) -> JSONResponse:
    entry = _registry(request).entry(request.path_params["name"])
    return JSONResponse(_model_card(entry.name))


async def _load(request: Request, body: dict[str, Any], kind: type, endpoint: str) -> tuple[ServedModel, Any]:
    if "model" not in body:
        raise bad_request("'model' is required", "model")
    entry = _registry(request).entry(body["model"])
    request.scope[MODEL_KEY] = entry.name
    model = await entry.get()
    if not isinstance(model, kind):
        what = "an encoder (embedding) model" if kind is EncoderModel else "a decoder (text generation) model"
        raise bad_request(f"{endpoint} needs {what}; '{entry.name}' is a {type(model).__name__}", "model")
    return entry, model


# --- embeddings ---


async def embeddings(request: Request) -> JSONResponse:
    body = await read_json(request)
    entry, model = await _load(request, body, EncoderModel, "/v1/embeddings")
    if "input" not in body:
        raise bad_request("'input' is required", "input")
    texts, token_ids = _embedding_input(body["input"])
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise bad_request(f"'encoding_format' must be 'float' or 'base64', got {encoding!r}", "encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and (
        not isinstance(dimensions, int) or isinstance(dimensions, bool) or not 1 <= dimensions <= model.dim
    ):
        raise bad_request(f"'dimensions' must be an integer from 1 to {model.dim}, got {dimensions!r}", "dimensions")
    truncate = body.get("truncate", False)
    if not isinstance(truncate, bool):
        raise bad_request("'truncate' must be true or false", "truncate")
    if token_ids is not None:
        for index, row in enumerate(token_ids):
            if len(row) > model.max_length and not truncate:
                raise bad_request(
                    f"input[{index}] has {len(row)} tokens; this model takes at most {model.max_length}; "
                    "send \"truncate\": true to cut it",
                    "input",
                )
            if any(t < 0 or t >= model.config.vocab_size for t in row):
                raise bad_request(f"token ids must be in [0, {model.config.vocab_size})", "input")
        token_ids = [row[: model.max_length] for row in token_ids]
        total = sum(len(row) for row in token_ids)
        limit = getattr(request.app.state, "max_input_tokens", batcher.DEFAULT_MAX_INPUT_TOKENS)
        if total > limit:
            raise bad_request(
                f"the request's inputs have {total} tokens; the server takes at most {limit} per request "
                "(--max-input-tokens); split it",
                "input",
            )
        items = [Encoded(row, [1] * len(row), [0] * len(row)) for row in token_ids]
        vectors = await batcher.embed(request.app.state, entry, model, items)
    else:
        vectors, items = await batcher.embed_texts(request.app.state, entry, model, texts, truncate)
    counts = [len(item.ids) for item in items]
    if dimensions is not None:
        vectors = np.ascontiguousarray(vectors[:, :dimensions])
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    data = []
    for index, vector in enumerate(vectors):
        if encoding == "base64":
            encoded: Any = base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
        else:
            encoded = vector.tolist()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    total = int(sum(counts))
    return JSONResponse(
        {"object": "list", "data": data, "model": entry.name, "usage": {"prompt_tokens": total, "total_tokens": total}}
    )


def _embedding_input(value: Any) -> tuple[list[str], list[list[int]] | None]:
    """(texts, None) or ([], token id lists) from a string, strings, token ids or lists of them."""
    message = "'input' must be a string, a list of strings, a list of token ids or a list of lists of token ids"
    if isinstance(value, str):
        return [value], None
    if not isinstance(value, list):
        raise bad_request(f"{message}, got {type(value).__name__}", "input")
    if not value:
        raise bad_request(f"{message}, got an empty list", "input")
    if all(isinstance(item, str) for item in value):
        return value, None
    if all(_is_int(item) for item in value):
        return [], [list(value)]
    if all(isinstance(item, list) and item and all(_is_int(t) for t in item) for item in value):
        return [], [list(item) for item in value]
    raise bad_request(message, "input")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- completions and chat ---


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise bad_request(f"'{key}' must be a number from {low} to {high}, got {value!r}", key)
    return float(value)


def _integer(body: dict[str, Any], key: str, low: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not _is_int(value) or value < low:
        raise bad_request(f"'{key}' must be an integer >= {low}, got {value!r}", key)
    return int(value)


def _sampling(body: dict[str, Any], default_max_tokens: int | None) -> dict[str, Any]:
    """new_sequence keyword arguments from OpenAI parameters (plus vLLM's top_k, min_p,
    repetition_penalty, ignore_eos); parameters this server cannot honour are refused, not ignored."""
    if _integer(body, "n", 1) not in (None, 1):
        raise bad_request("'n' > 1 is not supported yet", "n")
    if _integer(body, "best_of", 1) not in (None, 1):
        raise bad_request("'best_of' > 1 is not supported yet", "best_of")
    for key in ("logprobs", "top_logprobs", "echo", "suffix", "logit_bias", "tools"):
        if body.get(key):  # null, false, 0, "" and {} ask for nothing
            raise bad_request(f"'{key}' is not supported yet", key)
    response_format = body.get("response_format")
    if response_format and response_format != {"type": "text"}:
        raise bad_request("'response_format' other than text is not supported yet", "response_format")
    for key in ("presence_penalty", "frequency_penalty"):
        if _number(body, key, 0.0, -2.0, 2.0) != 0.0:
            raise bad_request(f"'{key}' is not supported yet (use repetition_penalty)", key)
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop)):
        raise bad_request("'stop' must be a non-empty string or a list of them", "stop")
    max_tokens = _integer(body, "max_completion_tokens", 1) or _integer(body, "max_tokens", 1) or default_max_tokens
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise bad_request(f"'seed' must be an integer, got {seed!r}", "seed")
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise bad_request("'ignore_eos' must be true or false", "ignore_eos")
    return {
        "ignore_eos": ignore_eos,
        "max_tokens": max_tokens,
        "temperature": _number(body, "temperature", 1.0, 0.0, 2.0),
        "top_p": _number(body, "top_p", 1.0, 0.0, 1.0),
        "top_k": _integer(body, "top_k", 0) or 0,
        "min_p": _number(body, "min_p", 0.0, 0.0, 1.0),
        "repetition_penalty": _number(body, "repetition_penalty", 1.0, 0.01, 10.0),
        "seed": seed,
        "stop": stop or None,
    }


def _new_sequences(
    model: DecoderModel, prompts: list[Any], params: dict[str, Any], keep_last: int | None = None, limit: int | None = None
) -> list[Any]:
    """One sequence per prompt. ``keep_last`` (vLLM's ``truncate_prompt_tokens``) keeps only
    a prompt's last tokens; ``limit`` caps the prompts' tokens together (400 past it)."""
    sequences = []
    total = 0
    for index, prompt in enumerate(prompts):
        kwargs = dict(params)
        ids = model.tokenizer.encode_ids(prompt, add_special_tokens=True) if isinstance(prompt, str) else prompt
        if keep_last is not None:
            ids = ids[-keep_last:]
        room = model.max_context - len(ids)
        if room < 1:
            raise bad_request(
                f"prompt[{index}] has {len(ids)} tokens; the model's context is {model.max_context} and leaves no "
                "room to generate; send \"truncate_prompt_tokens\" to keep only the last ones",
                "prompt",
            )
        total += len(ids)
        if limit is not None and total > limit:
            raise bad_request(
                f"the request's prompts have more than {limit} tokens, the most the server takes per request "
                "(--max-input-tokens)",
                "prompt",
            )
        kwargs["max_tokens"] = min(kwargs["max_tokens"] or room, room)
        sequences.append(model.new_sequence(ids, **kwargs))
    return sequences


def _keep_last(body: dict[str, Any]) -> int | None:
    """vLLM's ``truncate_prompt_tokens``: keep only the prompt's last N tokens."""
    return _integer(body, "truncate_prompt_tokens", 1)


def _completion_prompts(value: Any) -> list[Any]:
    message = "'prompt' must be a string, a list of strings, a list of token ids or a list of lists of token ids"
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(item, str) for item in value) or all(
            isinstance(item, list) and item and all(_is_int(t) for t in item) for item in value
        ):
            return list(value)
        if all(_is_int(item) for item in value):
            return [value]
    raise bad_request(message, "prompt")


def _chat_prompt(model: DecoderModel, messages: Any) -> list[int]:
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list of {role, content} objects", "messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise bad_request(f"messages[{index}] must be an object with a string 'role'", "messages")
        content = message.get("content")
        if isinstance(content, list):  # content parts: only text is understood
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
                raise bad_request(f"messages[{index}].content: only text parts are supported", "messages")
            message["content"] = "".join(p["text"] for p in content)
        elif not isinstance(content, str) and content is not None:
            raise bad_request(f"messages[{index}].content must be a string", "messages")
    if model.chat_template is None:
        raise bad_request("this model has no chat template; use /v1/completions", "model")
    text = model.apply_chat_template(messages, add_generation_prompt=True)
    return model.tokenizer.encode_ids(text, add_special_tokens=False)


async def completions(request: Request) -> Any:
    body = await read_json(request)
    entry, model = await _load(request, body, DecoderModel, "/v1/completions")
    if "prompt" not in body:
        raise bad_request("'prompt' is required", "prompt")
    prompts = _completion_prompts(body["prompt"])
    return await _generate(request, body, entry, model, prompts, chat=False, default_max_tokens=16)


async def chat_completions(request: Request) -> Any:
    body = await read_json(request)
    entry, model = await _load(request, body, DecoderModel, "/v1/chat/completions")
    if "messages" not in body:
        raise bad_request("'messages' is required", "messages")
    ids = _chat_prompt(model, body["messages"])
    return await _generate(request, body, entry, model, [ids], chat=True, default_max_tokens=None)


async def _generate(
    request: Request,
    body: dict[str, Any],
    entry: ServedModel,
    model: DecoderModel,
    prompts: list[Any],
    *,
    chat: bool,
    default_max_tokens: int | None,
) -> Any:
    params = _sampling(body, default_max_tokens)
    limit = getattr(request.app.state, "max_input_tokens", batcher.DEFAULT_MAX_INPUT_TOKENS)
    try:
        sequences = _new_sequences(model, prompts, params, _keep_last(body), limit)
    except (ValueError, TypeError) as error:
        raise bad_request(str(error), "prompt") from None
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be true or false", "stream")
    ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    created = int(time.time())
    options = body.get("stream_options") or {}
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    job = scheduler_for(request.app.state, entry, model).submit(sequences)  # 429/503 before any byte is sent
    if stream:
        events = _stream(request, entry, job, ident, created, chat, include_usage)
        return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    try:
        await job.wait()
    finally:
        job.cancel()  # no-op once finished; frees the batch slot if this handler is cancelled
        _count_generated(request, entry, sequences)
    choices = []
    for index, seq in enumerate(sequences):
        if chat:
            choice: dict[str, Any] = {"index": index, "message": {"role": "assistant", "content": seq.text}}
        else:
            choice = {"index": index, "text": seq.text}
        choice["logprobs"] = None
        choice["finish_reason"] = seq.finish_reason
        choices.append(choice)
    return JSONResponse(
        {
            "id": ident,
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": entry.name,
            "choices": choices,
            "usage": _usage(sequences),
        }
    )


def _usage(sequences: list[Any]) -> dict[str, int]:
    prompt = sum(len(s.prompt_ids) for s in sequences)
    completion = sum(len(s.token_ids) for s in sequences)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _count_generated(request: Request, entry: ServedModel, sequences: list[Any]) -> None:
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.generated_tokens.labels(entry.name).inc(sum(len(s.token_ids) for s in sequences))


async def _stream(
    request: Request,
    entry: ServedModel,
    job: Generation,
    ident: str,
    created: int,
    chat: bool,
    include_usage: bool,
) -> AsyncIterator[str]:
    """Server-sent events: one chunk per new text piece, one with each finish_reason, [DONE]."""
    kind = "chat.completion.chunk" if chat else "text_completion"

    def event(choices: list[dict[str, Any]], **extra: Any) -> str:
        chunk = {"id": ident, "object": kind, "created": created, "model": entry.name, "choices": choices, **extra}
        return f"data: {json.dumps(chunk)}\n\n"

    def choice(index: int, text: str | None, finish_reason: str | None, first: bool = False) -> dict[str, Any]:
        if chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
            if text:
                delta["content"] = text
            return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish_reason}

    sequences = job.sequences
    try:
        if chat:
            yield event([choice(i, None, None, first=True) for i in range(len(sequences))])
        async for outputs in job:
            for index, out in outputs:
                if out.text:
                    yield event([choice(index, out.text, None)])
                if out.finish_reason is not None:
                    yield event([choice(index, None, out.finish_reason)])
    finally:
        job.cancel()  # the client went away (or the stream ended): the sequences leave the batch
        _count_generated(request, entry, sequences)
    if include_usage:
        yield event([], usage=_usage(sequences))
    yield "data: [DONE]\n\n"
