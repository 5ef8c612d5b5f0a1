"""The CUDA device plugin (device_plugins/cuda) from Python.

Everywhere: the ``cuda`` device is registered and ``rt.devices()`` lists it; where it cannot
run (no NVIDIA driver, no GPU, a missing CUDA library) it says why, and compiling for it
raises DeviceError with that reason. With a GPU: graphs, the tiny BERT and decoder fixtures
and (when pulled) MiniLM run on CUDA and match the CPU / the golden files. The op-by-op
conformance suite runs in Rust: ``cargo test -p rtserve-cuda``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import rtserve as rt
from rtserve import catalog

FIXTURES = Path(__file__).parent / "fixtures"


def _cuda() -> dict:
    return next(d for d in rt.devices() if d["name"] == "cuda")


CUDA_AVAILABLE = _cuda()["available"]
needs_gpu = pytest.mark.skipif(not CUDA_AVAILABLE, reason=f"cuda unavailable here: {_cuda()['description']}")


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_cuda_is_listed_with_a_reason_when_unavailable():
    info = _cuda()
    assert info["description"]
    assert any(d["name"] == "cpu" and d["available"] for d in rt.devices())
    if info["available"]:
        pytest.skip(f"cuda is available here: {info['description']}")
    g = rt.Graph()
    x = g.input("x", (2,), "f32")
    g.output("y", g.exp(x))
    with pytest.raises(rt.DeviceError, match="not available here") as e:
        g.compile(device="cuda")
    assert info["description"] in str(e.value)
    with pytest.raises(rt.DeviceError):
        rt.load(FIXTURES / "tiny_bert", device="cuda")


def _mlp_graph() -> rt.Graph:
    rng = np.random.default_rng(0)
    g = rt.Graph()
    x = g.input("x", ("batch", 33), "f32")
    w1 = g.constant(rng.standard_normal((65, 33)).astype(np.float32) * 0.2)
    b1 = g.constant(rng.standard_normal(65).astype(np.float32))
    w2 = g.constant(rng.standard_normal((33, 65)).astype(np.float32) * 0.2)
    h = g.layer_norm(x, None, None, eps=1e-5)
    h = g.linear(h, w1, b1, activation="gelu")
    g.output("y", g.add(g.linear(h, w2), x))
    return g


@needs_gpu
def test_graph_on_cuda_matches_cpu_and_skips_prepacking():
    g = _mlp_graph()
    cpu, gpu = g.compile(device="cpu"), g.compile(device="cuda")
    assert gpu.device == "cuda"
    assert "prepacked" not in gpu.summary() and "prepacked" in cpu.summary()
    for batch in (1, 9, 300):
        x = np.random.default_rng(batch).standard_normal((batch, 33)).astype(np.float32)
        want, got = cpu.run({"x": x})["y"].numpy(), gpu.run({"x": x})["y"].numpy()
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


@needs_gpu
@pytest.mark.parametrize("name", ["tiny_bert", "tiny_bert_gelu_new", "tiny_bert_type_vocab_1"])
def test_tiny_bert_on_cuda_matches_cpu(name):
    cpu, gpu = rt.load(FIXTURES / name), rt.load(FIXTURES / name, device="cuda")
    texts = ["hello world", "a somewhat longer sentence to embed on the gpu", ""]
    np.testing.assert_allclose(gpu.embed(texts), cpu.embed(texts), atol=1e-5)


DECODERS = sorted(p.parent.name for p in FIXTURES.glob("tiny_*/golden_prompts.json"))


@needs_gpu
@pytest.mark.parametrize("name", DECODERS)
def test_tiny_decoder_greedy_tokens_on_cuda_equal_cpu(name):
    folder = FIXTURES / name
    prompts = json.loads((folder / "golden_prompts.json").read_text(encoding="utf-8"))["prompts"]
    cpu, gpu = rt.load(folder), rt.load(folder, device="cuda")
    assert gpu.device == "cuda"
    for p in prompts:
        want = cpu.generate(p["input_ids"], max_tokens=12, ignore_eos=True).token_ids
        got = gpu.generate(p["input_ids"], max_tokens=12, ignore_eos=True).token_ids
        assert got == want, p["name"]
        logits_cpu = cpu.forward(np.asarray([p["input_ids"]]))
        logits_gpu = gpu.forward(np.asarray([p["input_ids"]]))
        assert np.abs(logits_gpu - logits_cpu).max() < 1e-4, p["name"]


@needs_gpu
def test_tiny_decoder_bf16_weights_on_cuda():
    folder = FIXTURES / DECODERS[0]
    prompt = json.loads((folder / "golden_prompts.json").read_text(encoding="utf-8"))["prompts"][0]
    cpu, gpu = rt.load(folder, dtype="bf16"), rt.load(folder, device="cuda", dtype="bf16")
    a = cpu.forward(np.asarray([prompt["input_ids"]]))
    b = gpu.forward(np.asarray([prompt["input_ids"]]))
    assert np.abs(a - b).max() < 2e-2 * max(1.0, np.abs(a).max())


@needs_gpu
@pytest.mark.skipif(not catalog.is_pulled("minilm"), reason="minilm not pulled (python -m rtserve pull minilm)")
def test_minilm_on_cuda_matches_the_golden_file():
    folder = FIXTURES / "minilm_golden"
    sentences = json.loads((folder / "sentences.json").read_text(encoding="utf-8"))
    with np.load(folder / "golden.npz") as z:
        golden = z["embeddings"]
    model = rt.load("minilm", device="cuda")
    cos = _cosines(model.embed(sentences), golden)
    assert cos.min() >= 0.9999, cos.min()


@needs_gpu
@pytest.mark.parametrize("name", ["tiny_bert", "tiny_bert_gelu_new"])
def test_tiny_bert_bf16_weights_on_cuda_close_to_cpu_f32(name):
    # bf16 weights through cuBLASLt (activations rounded to bf16, f32 accumulation).
    texts = ["hello world", "a somewhat longer sentence to embed on the gpu", "x"]
    want = rt.load(FIXTURES / name).embed(texts)
    got = rt.load(FIXTURES / name, device="cuda", dtype="bf16").embed(texts)
    assert _cosines(got, want).min() >= 0.999


@needs_gpu
@pytest.mark.skipif(not catalog.is_pulled("minilm"), reason="minilm not pulled (python -m rtserve pull minilm)")
def test_minilm_bf16_weights_on_cuda_close_to_the_golden_file():
    folder = FIXTURES / "minilm_golden"
    sentences = json.loads((folder / "sentences.json").read_text(encoding="utf-8"))
    with np.load(folder / "golden.npz") as z:
        golden = z["embeddings"]
    model = rt.load("minilm", device="cuda", dtype="bf16")
    assert _cosines(model.embed(sentences), golden).min() >= 0.999


def _serve(spec: str, device: str):
    """``python -m rtserve serve SPEC --device DEVICE --port 0``: (process, base URL)."""
    command = [sys.executable, "-m", "rtserve", "serve", spec, "--device", device, "--port", "0"]
    errors = tempfile.TemporaryFile(mode="w+")  # read only on failure; a pipe could fill up
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.match(r"rtserve: serving \S+ on (http://127\.0\.0\.1:\d+) ", line)
    if not match:
        process.kill()
        errors.seek(0)
        pytest.fail(f"no ready line ({line!r}); stderr:\n{errors.read()}")
    return process, match[1]


@needs_gpu
@pytest.mark.parametrize("model", ["tiny_bert", "minilm"])
def test_server_on_cuda_returns_the_cpu_embeddings(model):
    # A real socket: the server's --device cuda answers /v1/embeddings like the CPU library.
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    if model == "minilm" and not catalog.is_pulled("minilm"):
        pytest.skip("minilm not pulled (python -m rtserve pull minilm)")
    source = str(FIXTURES / model) if model == "tiny_bert" else "minilm"
    texts = ["A man is eating food.", "The new movie is awesome", "x"]
    process, url = _serve(f"m={source}", "cuda")
    try:
        response = httpx.post(
            f"{url}/v1/embeddings",
            json={"model": "m", "input": texts, "encoding_format": "float"},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        got = np.asarray([d["embedding"] for d in response.json()["data"]], dtype=np.float32)
    finally:
        process.kill()
        process.wait(timeout=10)
    want = rt.load(source).embed(texts)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert _cosines(got, want).min() >= 0.9999
