"""The HTTP server end to end: a real `python -m rtserve serve` subprocess on 127.0.0.1,
driven by the official clients (openai, tritonclient) and raw httpx requests.

References are the same models loaded in this process (rt.load), so the server must return
exactly what the library computes.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

import rtserve as rt
from conftest import run_in_threads

openai = pytest.importorskip("openai")
triton = pytest.importorskip("tritonclient.http")

FIXTURES = Path(__file__).resolve().parent / "fixtures"
BERT = FIXTURES / "tiny_bert"
LLAMA = FIXTURES / "tiny_llama_gqa_tied"
API_KEY = "test-key-123"
MAX_REQUEST_BYTES = 64 * 1024
AUTH = {"Authorization": f"Bearer {API_KEY}"}  # tritonclient writes into headers: pass dict(AUTH)
READY_TIMEOUT_S = 60.0


@contextlib.contextmanager
def running_server(*args: str) -> Iterator[str]:
    """Runs ``python -m rtserve ARGS``; yields its ready line once printed; kills it after."""
    command = [sys.executable, "-m", "rtserve", *args]
    env = {k: v for k, v in os.environ.items() if k != "RTSERVE_API_KEY"}
    # stderr goes to a file: a pipe nobody reads could fill up and stall the server.
    errors = tempfile.TemporaryFile(mode="w+")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True, env=env)
    running_server.last_process = process  # type: ignore[attr-defined]
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    try:
        try:
            line = lines.get(timeout=READY_TIMEOUT_S)
        except queue.Empty:
            line = None
        if line is None:
            process.kill()
            process.wait(timeout=10)
            errors.seek(0)
            pytest.fail(f"the server printed no ready line; stderr:\n{errors.read()}")
        yield line
    finally:
        process.kill()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
        errors.close()


@pytest.fixture(scope="module")
def server(minilm_dir: Path) -> Iterator[str]:
    """The server's base URL: three models, an API key and a small request limit."""
    args = [
        "serve", f"bert={BERT}", f"llama={LLAMA}", f"minilm={minilm_dir}",
        "--port", "0", "--api-key", API_KEY, "--max-request-bytes", str(MAX_REQUEST_BYTES),
    ]  # fmt: skip
    with running_server(*args) as line:
        match = re.match(r"rtserve: serving (.+) on (http://127\.0\.0\.1:\d+) \(try: curl ", line)
        assert match, line
        assert match[1] == "bert, llama, minilm"
        yield match[2]


def test_no_arguments_serve_minilm(minilm_dir: Path) -> None:
    # `python -m rtserve` alone serves the demo model (on port 8000; here 0, a free one).
    with running_server("--port", "0") as line:
        url = re.match(r"rtserve: serving minilm on (http://127\.0\.0\.1:\d+) ", line)[1]  # type: ignore[index]
        body = '{"model": "minilm", "input": "hello"}'
        assert line.rstrip("\n") == (
            f"rtserve: serving minilm on {url} (try: curl {url}/v1/embeddings "
            f"-H 'Content-Type: application/json' -d '{body}')"
        )
        response = httpx.post(f"{url}/v1/embeddings", content=body)
        assert response.status_code == 200, response.text
        assert len(response.json()["data"][0]["embedding"]) == 384


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def bert() -> rt.models.EncoderModel:
    return rt.load(BERT)


@pytest.fixture(scope="module")
def llama() -> rt.models.DecoderModel:
    return rt.load(LLAMA)


# --- OpenAI: models and embeddings ---------------------------------------------------------


def test_models_list(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["bert", "llama", "minilm"]
    assert client.models.retrieve("llama").id == "llama"


def test_embeddings_default_base64(client: openai.OpenAI, bert: rt.models.EncoderModel) -> None:
    # The official client asks for base64 by default and decodes it to floats.
    response = client.embeddings.create(model="bert", input="hello world")
    got = np.asarray(response.data[0].embedding, dtype=np.float32)
    np.testing.assert_allclose(got, bert.embed(["hello world"])[0], rtol=1e-6, atol=1e-6)
    assert response.model == "bert"
    count = bert.tokenizer.count(["hello world"])[0]
    assert response.usage.prompt_tokens == response.usage.total_tokens == count


def test_embeddings_float_list_input(client: openai.OpenAI, bert: rt.models.EncoderModel) -> None:
    texts = ["the cat sat", "a much longer sentence about dogs and their owners", "x"]
    response = client.embeddings.create(model="bert", input=texts, encoding_format="float")
    got = np.asarray([d.embedding for d in response.data], dtype=np.float32)
    assert [d.index for d in response.data] == [0, 1, 2]
    np.testing.assert_allclose(got, bert.embed(texts), rtol=1e-6, atol=1e-6)
    assert response.usage.prompt_tokens == sum(bert.tokenizer.count(texts))


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_embeddings_dimensions(client: openai.OpenAI, bert: rt.models.EncoderModel, encoding_format: str) -> None:
    response = client.embeddings.create(model="bert", input=["hello", "world"], dimensions=16, encoding_format=encoding_format)
    if encoding_format == "float":
        got = np.asarray([d.embedding for d in response.data], dtype=np.float32)
    else:
        import base64

        got = np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in response.data])
    full = bert.embed(["hello", "world"])[:, :16]
    np.testing.assert_allclose(got, full / np.linalg.norm(full, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)


def test_embeddings_token_ids(client: openai.OpenAI, bert: rt.models.EncoderModel) -> None:
    texts = ["hello world", "the cat"]
    rows = [bert.tokenizer.encode_ids(t) for t in texts]
    single = client.embeddings.create(model="bert", input=rows[0], encoding_format="float")
    several = client.embeddings.create(model="bert", input=rows, encoding_format="float")
    expected = bert.embed(texts)
    np.testing.assert_allclose(single.data[0].embedding, expected[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([d.embedding for d in several.data], expected, rtol=1e-5, atol=1e-6)
    assert several.usage.prompt_tokens == sum(len(r) for r in rows)


def test_embeddings_minilm_matches_in_process(client: openai.OpenAI, minilm_dir: Path) -> None:
    texts = ["A man is eating food.", "The new movie is awesome"]
    response = client.embeddings.create(model="minilm", input=texts)
    got = np.asarray([d.embedding for d in response.data], dtype=np.float32)
    np.testing.assert_allclose(got, rt.load(minilm_dir).embed(texts), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


# --- OpenAI: completions and chat ----------------------------------------------------------


def test_completion(client: openai.OpenAI, llama: rt.models.DecoderModel) -> None:
    response = client.completions.create(model="llama", prompt="hello", max_tokens=8, temperature=0)
    expected = llama.generate("hello", max_tokens=8, temperature=0)
    assert response.choices[0].text == expected.text
    assert response.choices[0].finish_reason == expected.finish_reason
    assert response.usage.prompt_tokens == len(expected.prompt_token_ids)
    assert response.usage.completion_tokens == len(expected.token_ids)


def test_completion_stream(client: openai.OpenAI, llama: rt.models.DecoderModel) -> None:
    chunks = list(client.completions.create(model="llama", prompt="hello", max_tokens=8, temperature=0, stream=True))
    expected = llama.generate("hello", max_tokens=8, temperature=0)
    assert "".join(c.choices[0].text for c in chunks) == expected.text
    assert chunks[-1].choices[0].finish_reason == expected.finish_reason
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_completion_batch_of_prompts_and_stop(client: openai.OpenAI, llama: rt.models.DecoderModel) -> None:
    prompts = ["hello", "the cat"]
    response = client.completions.create(model="llama", prompt=prompts, max_tokens=6, temperature=0)
    for choice, prompt in zip(response.choices, prompts):
        assert choice.text == llama.generate(prompt, max_tokens=6, temperature=0).text
    full = llama.generate("hello", max_tokens=8, temperature=0).text
    stop = full[2:4]
    stopped = client.completions.create(model="llama", prompt="hello", max_tokens=8, temperature=0, stop=[stop])
    assert stopped.choices[0].text == llama.generate("hello", max_tokens=8, temperature=0, stop=[stop]).text
    assert stopped.choices[0].finish_reason == "stop"


MESSAGES = [{"role": "user", "content": "Hi there"}]


def test_chat(client: openai.OpenAI, llama: rt.models.DecoderModel) -> None:
    response = client.chat.completions.create(model="llama", messages=MESSAGES, max_tokens=8, temperature=0)
    expected = llama.chat(MESSAGES, max_tokens=8, temperature=0)
    assert response.object == "chat.completion"
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].message.content == expected.text
    assert response.choices[0].finish_reason == expected.finish_reason
    assert response.usage.total_tokens == len(expected.prompt_token_ids) + len(expected.token_ids)


def test_chat_stream_with_usage(client: openai.OpenAI, llama: rt.models.DecoderModel) -> None:
    chunks = list(
        client.chat.completions.create(
            model="llama", messages=MESSAGES, max_tokens=8, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    expected = llama.chat(MESSAGES, max_tokens=8, temperature=0)
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in with_choices) == expected.text
    assert with_choices[-1].choices[0].finish_reason == expected.finish_reason
    assert chunks[-1].usage.completion_tokens == len(expected.token_ids)


def test_stream_ends_with_done(server: str) -> None:
    body = {"model": "llama", "prompt": "hi", "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{server}/v1/completions", json=body, headers=AUTH, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in events)


# --- KServe v2 with tritonclient -----------------------------------------------------------


@pytest.fixture(scope="module")
def triton_client(server: str):  # type: ignore[no-untyped-def]
    client = triton.InferenceServerClient(server.removeprefix("http://"))
    yield client
    client.close()


def test_kserve_health_and_metadata(triton_client, bert: rt.models.EncoderModel) -> None:  # type: ignore[no-untyped-def]
    assert triton_client.is_server_live()
    assert triton_client.is_server_ready()
    assert triton_client.is_model_ready("bert", headers=dict(AUTH))
    metadata = triton_client.get_model_metadata("bert", headers=dict(AUTH))
    assert metadata["name"] == "bert"
    assert metadata["inputs"][0]["datatype"] == "BYTES"
    assert metadata["outputs"][0] == {"name": "embedding", "datatype": "FP32", "shape": [-1, bert.dim]}
    assert triton_client.get_server_metadata(headers=dict(AUTH))["name"] == "rtserve"


@pytest.mark.parametrize("binary", [False, True])
def test_kserve_infer(triton_client, bert: rt.models.EncoderModel, binary: bool) -> None:  # type: ignore[no-untyped-def]
    texts = ["hello world", "the cat sat"]
    tensor = triton.InferInput("text", [2], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object), binary_data=binary)
    outputs = [triton.InferRequestedOutput("embedding", binary_data=binary)]
    result = triton_client.infer("bert", [tensor], outputs=outputs, headers=dict(AUTH))
    np.testing.assert_allclose(result.as_numpy("embedding"), bert.embed(texts), rtol=1e-6, atol=1e-6)
    default = triton_client.infer("bert", [tensor], headers=dict(AUTH))  # binary output by default
    np.testing.assert_allclose(default.as_numpy("embedding"), bert.embed(texts), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("binary", [False, True])
def test_kserve_encoder_token_ids(triton_client, bert: rt.models.EncoderModel, binary: bool) -> None:  # type: ignore[no-untyped-def]
    # INT64 input_ids with a right-padded attention_mask give the texts' embeddings.
    texts = ["hello world", "a longer sentence about the cat"]
    rows = [bert.tokenizer.encode_ids(t) for t in texts]
    width = max(len(r) for r in rows)
    ids = np.zeros((2, width), dtype=np.int64)
    mask = np.zeros((2, width), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    tensors = []
    for name, array in (("input_ids", ids), ("attention_mask", mask)):
        tensor = triton.InferInput(name, list(array.shape), "INT64")
        tensor.set_data_from_numpy(array, binary_data=binary)
        tensors.append(tensor)
    result = triton_client.infer("bert", tensors, headers=dict(AUTH))
    np.testing.assert_allclose(result.as_numpy("embedding"), bert.embed(texts), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("binary", [False, True])
def test_kserve_decoder_generates_text(triton_client, llama: rt.models.DecoderModel, binary: bool) -> None:  # type: ignore[no-untyped-def]
    prompts = ["hello", "the cat sat"]
    tensor = triton.InferInput("text_input", [2], "BYTES")
    tensor.set_data_from_numpy(np.array([p.encode() for p in prompts], dtype=object), binary_data=binary)
    outputs = [triton.InferRequestedOutput("text_output", binary_data=binary)]
    result = triton_client.infer(
        "llama", [tensor], outputs=outputs, parameters={"max_tokens": 7, "temperature": 0}, headers=dict(AUTH)
    )
    got = [t.decode() if isinstance(t, bytes) else t for t in result.as_numpy("text_output")]
    assert got == [llama.generate(p, max_tokens=7, temperature=0).text for p in prompts]
    metadata = triton_client.get_model_metadata("llama", headers=dict(AUTH))
    assert [i["name"] for i in metadata["inputs"]] == ["text_input", "input_ids", "attention_mask"]
    assert metadata["outputs"][1] == {"name": "logits", "datatype": "FP32", "shape": [-1, -1, llama.config.vocab_size]}


def test_kserve_decoder_logits(triton_client, llama: rt.models.DecoderModel) -> None:  # type: ignore[no-untyped-def]
    ids = np.array([[1, 5, 9, 13], [2, 4, 0, 0]], dtype=np.int64)
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=np.int64)
    tensors = []
    for name, array in (("input_ids", ids), ("attention_mask", mask)):
        tensor = triton.InferInput(name, list(array.shape), "INT64")
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    result = triton_client.infer("llama", tensors, headers=dict(AUTH))
    np.testing.assert_allclose(result.as_numpy("logits"), llama.forward(ids, mask), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([{"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [1, 2.5]}], "only INT64"),
        ([{"name": "input_ids", "shape": [1, 3], "datatype": "INT64", "data": [1, 2]}], "holds 3 elements"),
        ([{"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]},
          {"name": "attention_mask", "shape": [1, 2], "datatype": "INT64", "data": [0, 1]}], "right-padded"),
        ([{"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]},
          {"name": "attention_mask", "shape": [2, 1], "datatype": "INT64", "data": [1, 1]}], "has shape"),
        ([{"name": "input_ids", "shape": [1, 1], "datatype": "INT64", "data": [10**9]}], "token ids must be in"),
        ([{"name": "x", "shape": [1], "datatype": "INT64", "data": [1]}], "'input_ids'"),
        ([{"name": "t", "shape": [1], "datatype": "BYTES", "data": ["a"]},
          {"name": "input_ids", "shape": [1, 1], "datatype": "INT64", "data": [1]}], "not both"),
        ([{"name": "t", "shape": [1], "datatype": "BYTES", "data": ["a"]},
          {"name": "t", "shape": [1], "datatype": "BYTES", "data": ["b"]}], "given twice"),
        ([{"name": "t", "shape": [1], "datatype": "STRING", "data": ["a"]}], "unknown datatype"),
        ([{"name": "t", "shape": [-1], "datatype": "BYTES", "data": ["a"]}], "non-negative"),
        ([], "non-empty list"),
    ],
)  # fmt: skip
def test_kserve_bad_inputs(server: str, inputs: list, message: str) -> None:
    response = httpx.post(f"{server}/v2/models/bert/infer", json={"inputs": inputs}, headers=AUTH)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_kserve_binary_section_must_match(server: str) -> None:
    header = json.dumps(
        {"inputs": [{"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "parameters": {"binary_data_size": 16}}]}
    ).encode()
    ids = np.array([[1, 2]], dtype="<i8").tobytes()
    for payload, message in ((ids + b"xx", "belong to no input"), (ids[:8], "does not fit")):
        response = httpx.post(
            f"{server}/v2/models/bert/infer",
            content=header + payload,
            headers={**AUTH, "Inference-Header-Content-Length": str(len(header))},
        )
        assert response.status_code == 400 and message in response.json()["error"], response.text
    unknown = httpx.post(
        f"{server}/v2/models/bert/infer",
        json={"inputs": [{"name": "t", "shape": [1], "datatype": "BYTES", "data": ["a"]}], "outputs": [{"name": "nope"}]},
        headers=AUTH,
    )
    assert unknown.status_code == 400 and "unknown output 'nope'" in unknown.json()["error"]


def test_kserve_errors(server: str) -> None:
    missing = httpx.get(f"{server}/v2/models/nope", headers=AUTH)
    assert missing.status_code == 404 and "nope" in missing.json()["error"]
    bad = httpx.post(f"{server}/v2/models/bert/infer", json={"inputs": [{"name": "t", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, headers=AUTH)
    assert bad.status_code == 400 and "BYTES" in bad.json()["error"] and "input_ids" in bad.json()["error"]
    assert httpx.get(f"{server}/v2/models/bert/ready").status_code == 401


# --- limits and errors ---------------------------------------------------------------------


def _openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_too_long_inputs_are_refused_with_the_numbers_or_cut_when_asked(server: str, bert: rt.models.EncoderModel) -> None:
    long_text = " ".join(f"word{i}" for i in range(3 * bert.max_length))
    count = len(bert.tokenizer.encode_ids(long_text))  # no truncation: the real count
    body = {"model": "bert", "input": ["short", long_text], "encoding_format": "float"}
    error = _openai_error(httpx.post(f"{server}/v1/embeddings", json=body, headers=AUTH), 400)
    assert error["code"] == "input_too_long" and error["param"] == "input"
    assert f"input[1] has {count} tokens" in error["message"] and f"at most {bert.max_length}" in error["message"]
    # asked to, the server cuts as model.embed does
    cut = httpx.post(f"{server}/v1/embeddings", json={**body, "truncate": True}, headers=AUTH)
    assert cut.status_code == 200, cut.text
    got = np.asarray([d["embedding"] for d in cut.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, bert.embed(["short", long_text]), rtol=1e-5, atol=1e-6)
    assert cut.json()["usage"]["prompt_tokens"] == 7 + bert.max_length  # counted after the cut
    # token ids: the same two answers
    ids = list(range(5, 5 + bert.max_length + 3))
    error = _openai_error(httpx.post(f"{server}/v1/embeddings", json={"model": "bert", "input": ids}, headers=AUTH), 400)
    assert f"input[0] has {len(ids)} tokens" in error["message"]
    ok = httpx.post(f"{server}/v1/embeddings", json={"model": "bert", "input": ids, "truncate": True}, headers=AUTH)
    assert ok.status_code == 200 and ok.json()["usage"]["prompt_tokens"] == bert.max_length
    # a long prompt for a decoder: keep its last tokens when asked (vLLM's truncate_prompt_tokens)
    prompt = " ".join(["hello"] * 400)
    error = _openai_error(
        httpx.post(f"{server}/v1/completions", json={"model": "llama", "prompt": prompt, "max_tokens": 2}, headers=AUTH), 400
    )
    assert "context is 128" in error["message"] and "truncate_prompt_tokens" in error["message"]
    body = {"model": "llama", "prompt": prompt, "max_tokens": 3, "temperature": 0, "truncate_prompt_tokens": 20}
    response = httpx.post(f"{server}/v1/completions", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    llama = rt.load(LLAMA)
    last = llama.tokenizer.encode_ids(prompt, add_special_tokens=True)[-20:]
    assert response.json()["choices"][0]["text"] == llama.generate(last, max_tokens=3, temperature=0).text
    assert response.json()["usage"]["prompt_tokens"] == 20


def test_max_input_tokens_per_request() -> None:
    with running_server("serve", f"bert={BERT}", f"llama={LLAMA}", "--port", "0", "--max-input-tokens", "40") as line:
        url = re.search(r"on (http://\S+) ", line)[1]  # type: ignore[index]
        text = "one two three"
        fit = 40 // rt.load(BERT).tokenizer.count([text])[0]
        texts = [text] * (fit + 1)
        error = _openai_error(httpx.post(f"{url}/v1/embeddings", json={"model": "bert", "input": texts}), 400)
        assert error["code"] == "request_too_large" and "at most 40 per request" in error["message"]
        assert httpx.post(f"{url}/v1/embeddings", json={"model": "bert", "input": texts[:fit]}).status_code == 200
        error = _openai_error(
            httpx.post(f"{url}/v1/completions", json={"model": "llama", "prompt": ["hello " * 30, "hi " * 30]}), 400
        )
        assert "more than 40 tokens" in error["message"]


def test_api_key_required(server: str) -> None:
    body = {"model": "bert", "input": "hi"}
    error = _openai_error(httpx.post(f"{server}/v1/embeddings", json=body), 401)
    assert error["type"] == "authentication_error"
    wrong = {"Authorization": "Bearer nope"}
    _openai_error(httpx.post(f"{server}/v1/embeddings", json=body, headers=wrong), 401)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).models.list()
    assert httpx.get(f"{server}/v2/health/live").status_code == 200  # probes need no key


def test_request_too_large(server: str) -> None:
    body = {"model": "bert", "input": "word " * MAX_REQUEST_BYTES}
    error = _openai_error(httpx.post(f"{server}/v1/embeddings", json=body, headers=AUTH), 413)
    assert str(MAX_REQUEST_BYTES) in error["message"]


@pytest.mark.parametrize(
    ("path", "body", "param", "words"),
    [
        ("/v1/embeddings", '{"model": "bert", "input": ', None, "not valid JSON"),
        ("/v1/embeddings", "[1, 2]", None, "JSON object"),
        ("/v1/embeddings", {"model": "bert", "input": 5}, "input", "'input' must be"),
        ("/v1/embeddings", {"model": "bert", "input": []}, "input", "'input' must be"),
        ("/v1/embeddings", {"model": "bert", "input": "x", "encoding_format": "int8"}, "encoding_format", "float"),
        ("/v1/embeddings", {"model": "bert", "input": "x", "dimensions": 10_000}, "dimensions", "from 1 to"),
        ("/v1/embeddings", {"input": "x"}, "model", "'model' is required"),
        ("/v1/embeddings", {"model": "llama", "input": "x"}, "model", "encoder"),
        ("/v1/completions", {"model": "llama", "prompt": "x", "temperature": "hot"}, "temperature", "number"),
        ("/v1/completions", {"model": "llama", "prompt": 3}, "prompt", "'prompt' must be"),
        ("/v1/completions", {"model": "llama", "prompt": "x", "n": 2}, "n", "not supported"),
        ("/v1/completions", {"model": "bert", "prompt": "x"}, "model", "decoder"),
        ("/v1/chat/completions", {"model": "llama", "messages": "hi"}, "messages", "list"),
    ],
)
def test_bad_requests(server: str, path: str, body: object, param: str | None, words: str) -> None:
    content = body if isinstance(body, str) else json.dumps(body)
    response = httpx.post(f"{server}{path}", content=content, headers={**AUTH, "Content-Type": "application/json"})
    error = _openai_error(response, 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert words in error["message"]


def test_unknown_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        client.embeddings.create(model="nope", input="hi")
    assert "nope" in str(raised.value)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=MESSAGES)


def test_unknown_route_and_method_use_the_api_error_shape(server: str) -> None:
    error = _openai_error(httpx.get(f"{server}/v1/nothing-here", headers=AUTH), 404)
    assert "/v1/nothing-here" in error["message"]
    _openai_error(httpx.get(f"{server}/v1/embeddings", headers=AUTH), 405)
    assert "error" in httpx.get(f"{server}/v2/nothing", headers=AUTH).json()


# --- concurrency, disconnects, lazy loading --------------------------------------------------


def test_concurrent_requests(server: str, bert: rt.models.EncoderModel, llama: rt.models.DecoderModel) -> None:
    # Requests from several threads interleave on the event loop; each model runs one at a
    # time under its lock, and every answer is the one the library gives.
    expected_vector = bert.embed(["hello world"])[0]
    expected_text = llama.generate("hello", max_tokens=6, temperature=0).text

    def worker(i: int) -> list[str]:
        problems = []
        for _ in range(3):
            body = {"model": "bert", "input": "hello world", "encoding_format": "float"}
            got = httpx.post(f"{server}/v1/embeddings", json=body, headers=AUTH, timeout=30).json()
            if not np.allclose(got["data"][0]["embedding"], expected_vector, atol=1e-6):
                problems.append(f"thread {i}: wrong embedding")
            body = {"model": "llama", "prompt": "hello", "max_tokens": 6, "temperature": 0}
            got = httpx.post(f"{server}/v1/completions", json=body, headers=AUTH, timeout=30).json()
            if got["choices"][0]["text"] != expected_text:
                problems.append(f"thread {i}: wrong completion {got!r}")
        return problems

    assert run_in_threads(worker, count=4, timeout=60) == []


def test_stream_disconnect_frees_the_model(server: str, llama: rt.models.DecoderModel) -> None:
    body = {"model": "llama", "prompt": "hello", "max_tokens": 100, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{server}/v1/completions", json=body, headers=AUTH, timeout=30) as response:
        assert next(response.iter_lines()).startswith("data: ")
    # The abandoned stream must not keep the model's lock.
    body = {"model": "llama", "prompt": "hello", "max_tokens": 4, "temperature": 0}
    response = httpx.post(f"{server}/v1/completions", json=body, headers=AUTH, timeout=10)
    assert response.json()["choices"][0]["text"] == llama.generate("hello", max_tokens=4, temperature=0).text


def test_models_load_on_first_use() -> None:
    # In process: create_app over a registry that has loaded nothing yet.
    from starlette.testclient import TestClient

    from rtserve.server import ModelRegistry, create_app

    registry = ModelRegistry.from_specs([f"bert={BERT}"])
    with TestClient(create_app(registry)) as local:
        assert local.get("/v2/health/ready").status_code == 503
        assert local.get("/v2/models/bert/ready").status_code == 503
        response = local.post("/v1/embeddings", json={"model": "bert", "input": "hi"})
        assert response.status_code == 200, response.text
        assert local.get("/v2/models/bert/ready").status_code == 200
        assert local.get("/v2/health/ready").status_code == 200


# --- embedding batcher, queue limit, metrics, shutdown --------------------------------------


def test_concurrent_embeddings_are_batched_and_exact(server: str, bert: rt.models.EncoderModel) -> None:
    # 16 clients x 10 requests of different lengths: the worker batches waiting requests
    # together (one model call), and each client still gets exactly its own vectors.
    texts = [" ".join(["word"] * (1 + (i * 7) % 23)) + f" {i}" for i in range(40)]
    expected = dict(zip(texts, bert.embed(texts)))

    def worker(i: int) -> list[str]:
        problems = []
        with httpx.Client(headers=AUTH, timeout=30) as http:
            for j in range(10):
                chosen = [texts[(i * 10 + j + k) % len(texts)] for k in range(1 + (i + j) % 3)]
                response = http.post(f"{server}/v1/embeddings", json={"model": "bert", "input": chosen, "encoding_format": "float"})
                if response.status_code != 200:
                    problems.append(f"thread {i}: {response.status_code} {response.text}")
                    continue
                got = np.asarray([d["embedding"] for d in response.json()["data"]], dtype=np.float32)
                if not np.allclose(got, [expected[t] for t in chosen], rtol=1e-5, atol=1e-6):
                    problems.append(f"thread {i}: wrong embeddings for {chosen}")
        return problems

    before = _scrape(server)
    assert run_in_threads(worker, count=16, timeout=60) == []
    after = _scrape(server)
    ok = 'rtserve_requests_total{model="bert",route="/v1/embeddings",status="200"}'
    assert after[ok] - before.get(ok, 0) == 160
    batches = after['rtserve_batch_size_count{model="bert"}'] - before.get('rtserve_batch_size_count{model="bert"}', 0)
    inputs = after['rtserve_batch_size_sum{model="bert"}'] - before.get('rtserve_batch_size_sum{model="bert"}', 0)
    assert 1 <= batches <= 160
    assert inputs == sum(1 + (i + j) % 3 for i in range(16) for j in range(10))


def _scrape(server: str) -> dict[str, float]:
    """``/metrics`` as {'name{labels}': value} (the sample lines)."""
    response = httpx.get(f"{server}/metrics", headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def test_metrics(server: str, client: openai.OpenAI) -> None:
    before = _scrape(server)
    client.embeddings.create(model="bert", input=["one", "two words"])
    client.completions.create(model="llama", prompt="hello", max_tokens=5, temperature=0, extra_body={"ignore_eos": True})
    httpx.post(f"{server}/v1/embeddings", json={"model": "nope", "input": "x"}, headers=AUTH)
    httpx.post(f"{server}/v1/embeddings", json={"model": "bert", "input": "x"})  # no key
    after = _scrape(server)

    def grew(key: str) -> float:
        return after.get(key, 0) - before.get(key, 0)

    assert grew('rtserve_requests_total{model="bert",route="/v1/embeddings",status="200"}') == 1
    assert grew('rtserve_requests_total{model="llama",route="/v1/completions",status="200"}') == 1
    assert grew('rtserve_requests_total{model="",route="/v1/embeddings",status="404"}') == 1  # unknown names: no series
    assert grew('rtserve_requests_total{model="",route="/v1/embeddings",status="401"}') == 1
    assert grew('rtserve_request_seconds_count{model="llama",route="/v1/completions"}') == 1
    assert grew('rtserve_generated_tokens_total{model="llama"}') == 5
    assert grew('rtserve_batch_size_sum{model="bert"}') == 2
    assert grew('rtserve_batch_tokens_sum{model="bert"}') == sum(rt.load(BERT).tokenizer.count(["one", "two words"]))
    assert after['rtserve_queue_depth{model="bert"}'] == 0
    for name in ("bert", "llama", "minilm"):
        assert after[f'rtserve_model_load_seconds{{model="{name}"}}'] > 0
    assert after['rtserve_model_bytes{model="bert"}'] == (BERT / "model.safetensors").stat().st_size
    assert not any('model="nope"' in key for key in after)


def test_batcher_queue_limit_in_process() -> None:
    # The queue logic alone, deterministic: a run that blocks until released.
    import asyncio

    from rtserve.server.batcher import EmbedBatcher
    from rtserve.server.errors import ApiError
    from rtserve.tokenizer import Encoded

    release = threading.Event()
    calls: list[int] = []

    def run(items: list[Encoded], on_rows: object = None) -> np.ndarray:
        release.wait(10)
        calls.append(len(items))
        return np.asarray([[float(item.ids[0])] for item in items], dtype=np.float32)

    def job(*ids: int) -> list[Encoded]:
        return [Encoded([i, i], [1, 1], [0, 0]) for i in ids]

    async def scenario() -> None:
        batcher = EmbedBatcher("m", run, max_batch_tokens=6, max_queue=2)
        first = asyncio.ensure_future(batcher.submit(job(1)))
        while not calls and batcher.depth:  # the worker takes the first job and blocks in run
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        waiting = [asyncio.ensure_future(batcher.submit(job(n))) for n in (2, 3)]
        await asyncio.sleep(0.05)
        assert batcher.depth == 2
        with pytest.raises(ApiError) as raised:
            await batcher.submit(job(9))
        assert raised.value.status == 429 and raised.value.headers == {"Retry-After": "1"}
        release.set()
        assert (await first).tolist() == [[1.0]]
        assert [(await w).tolist() for w in waiting] == [[[2.0]], [[3.0]]]
        assert calls == [1, 2]  # the two waiting requests ran as one batch (4 tokens <= 6)
        big = await asyncio.gather(batcher.submit(job(4, 5)), batcher.submit(job(6, 7)))
        assert [b.tolist() for b in big] == [[[4.0], [5.0]], [[6.0], [7.0]]]
        assert calls[-2:] == [2, 2]  # 4 + 4 tokens > 6: two batches
        batcher.stop()
        await batcher.wait_stopped()
        with pytest.raises(ApiError) as raised:
            await batcher.submit(job(1))
        assert raised.value.status == 503

    asyncio.run(scenario())


def test_queue_full_429_and_sigterm_finishes_in_flight(minilm_dir: Path) -> None:
    # --max-queue 1: a burst of slow requests gets some 429s (OpenAI error shape, Retry-After);
    # then SIGTERM while a request runs: it still gets its answer and the server exits 0.
    import signal

    texts = [f"word number {i} is here and there " * 12 for i in range(64)]
    with running_server("serve", f"m={minilm_dir}", "--port", "0", "--max-queue", "1") as line:
        url = re.match(r"rtserve: serving m on (http://127\.0\.0\.1:\d+) ", line)[1]  # type: ignore[index]
        statuses: list[int] = []
        refused: list[httpx.Response] = []

        def burst(i: int) -> list[str]:
            response = httpx.post(f"{url}/v1/embeddings", json={"model": "m", "input": texts}, timeout=60)
            statuses.append(response.status_code)
            if response.status_code == 429:
                refused.append(response)
            return []

        assert run_in_threads(burst, count=12, timeout=60) == []
        assert set(statuses) <= {200, 429} and 200 in statuses and 429 in statuses, statuses
        assert refused[0].headers["Retry-After"] == "1"
        assert _openai_error(refused[0], 429)["type"] == "rate_limit_error"
        samples = _scrape_open(url)
        assert samples['rtserve_requests_total{model="m",route="/v1/embeddings",status="429"}'] == statuses.count(429)

        process = running_server.last_process  # type: ignore[attr-defined]
        result: list[httpx.Response] = []
        worker = threading.Thread(
            target=lambda: result.append(httpx.post(f"{url}/v1/embeddings", json={"model": "m", "input": texts * 4}, timeout=60))
        )
        batches = samples['rtserve_batch_size_count{model="m"}']
        worker.start()
        import time

        deadline = time.monotonic() + 30
        while _scrape_open(url)['rtserve_batch_size_count{model="m"}'] == batches and time.monotonic() < deadline:
            time.sleep(0.02)  # until its batch has started (it runs for about a second)
        process.send_signal(signal.SIGTERM)
        worker.join(30)
        assert result and result[0].status_code == 200 and len(result[0].json()["data"]) == 256
        assert process.wait(timeout=20) == 0


def _scrape_open(url: str) -> dict[str, float]:
    samples = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


# --- model repository and idle unloading -----------------------------------------------------


def test_repository_with_tritonclient(triton_client, bert: rt.models.EncoderModel) -> None:  # type: ignore[no-untyped-def]
    headers = dict(AUTH)
    index = {m["name"]: m for m in triton_client.get_model_repository_index(headers=headers)}
    assert set(index) == {"bert", "llama", "minilm"}
    assert index["bert"]["state"] == "READY"
    triton_client.unload_model("bert", headers=headers)
    assert not triton_client.is_model_ready("bert", headers=headers)
    assert triton_client.is_server_ready()  # unloaded on purpose: it loads again when asked
    index = {m["name"]: m for m in triton_client.get_model_repository_index(headers=headers)}
    assert (index["bert"]["state"], index["bert"]["reason"]) == ("UNAVAILABLE", "unloaded")
    triton_client.load_model("bert", headers=headers)
    assert triton_client.is_model_ready("bert", headers=headers)
    triton_client.unload_model("bert", headers=headers)
    # The next request loads it again.
    tensor = triton.InferInput("text", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b"hello"], dtype=object))
    result = triton_client.infer("bert", [tensor], headers=headers)
    np.testing.assert_allclose(result.as_numpy("embedding"), bert.embed(["hello"]), rtol=1e-6, atol=1e-6)
    assert triton_client.is_model_ready("bert", headers=headers)


def test_repository_errors(server: str) -> None:
    assert httpx.post(f"{server}/v2/repository/models/nope/load", headers=AUTH).status_code == 404
    assert httpx.post(f"{server}/v2/repository/index").status_code == 401
    ready_only = httpx.post(f"{server}/v2/repository/index", json={"ready": True}, headers=AUTH)
    assert all(m["state"] == "READY" for m in ready_only.json())


def test_idle_unload_in_process() -> None:
    import time

    from starlette.testclient import TestClient

    from rtserve.server import ModelRegistry, create_app

    registry = ModelRegistry.from_specs([f"bert={BERT}"])
    with TestClient(create_app(registry, idle_unload=0.2)) as local:
        assert local.post("/v1/embeddings", json={"model": "bert", "input": "hi"}).status_code == 200
        assert local.get("/v2/models/bert/ready").status_code == 200
        deadline = time.monotonic() + 10
        while local.get("/v2/models/bert/ready").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert local.get("/v2/models/bert/ready").status_code == 503
        assert local.get("/v2/health/ready").status_code == 200
        assert local.post("/v1/embeddings", json={"model": "bert", "input": "hi"}).status_code == 200
        assert local.get("/v2/models/bert/ready").status_code == 200


def test_server_connections_have_nodelay():
    """Responses written in two parts must not wait for the client's delayed ACK."""
    import socket

    from rtserve.cli import listen_socket

    server = listen_socket("127.0.0.1", 0)
    try:
        assert server.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        client = socket.create_connection(server.getsockname())
        conn, _ = server.accept()
        try:
            assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        finally:
            conn.close()
            client.close()
    finally:
        server.close()
