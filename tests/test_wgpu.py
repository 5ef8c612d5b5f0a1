"""The wgpu device plugin (device_plugins/wgpu) from Python.

Everywhere: the ``wgpu`` device is registered and ``rt.devices()`` lists it with its adapter
and backend, or says why it cannot run (no Vulkan/Metal/DX12 adapter); compiling for an
unavailable device raises DeviceError with that reason. With an adapter (a GPU, or Mesa's
software lavapipe, which .ci/run installs): graphs, the tiny BERT and decoder fixtures and
all-MiniLM-L6-v2 run on wgpu and match the CPU / the golden file, and an op the device lacks
fails the compile with UnsupportedError naming it (no silent CPU fallback). The op-by-op
conformance suite runs in Rust: ``cargo test -p rtserve-wgpu``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import rtserve as rt

FIXTURES = Path(__file__).parent / "fixtures"


def _wgpu() -> dict:
    return next(d for d in rt.devices() if d["name"] == "wgpu")


WGPU_AVAILABLE = _wgpu()["available"]
needs_adapter = pytest.mark.skipif(
    not WGPU_AVAILABLE,
    reason=f"no wgpu adapter here ({_wgpu()['description']}); install Mesa's lavapipe: "
    "apt-get install mesa-vulkan-drivers libvulkan1",
)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_wgpu_is_listed_with_its_adapter_or_a_reason():
    info = _wgpu()
    assert info["description"]
    if not info["available"]:
        g = rt.Graph()
        x = g.input("x", (2,), "f32")
        g.output("y", g.exp(x))
        with pytest.raises(rt.DeviceError, match="not available here") as e:
            g.compile(device="wgpu")
        assert info["description"] in str(e.value)
        return
    # "<adapter name> (<backend>, <device type>, <driver>)"
    assert any(b in info["description"] for b in ("vulkan", "metal", "dx12")), info


@needs_adapter
def test_an_op_the_device_lacks_fails_the_compile_naming_it():
    g = rt.Graph()
    x = g.input("x", (3,), "f64")
    g.output("y", g.exp(x))
    with pytest.raises(rt.UnsupportedError, match="exp on f64"):
        g.compile(device="wgpu")
    g = rt.Graph()
    a = g.input("a", (3,), "i64")
    g.output("y", g.add(a, a))
    with pytest.raises(rt.UnsupportedError, match="add on i64"):
        g.compile(device="wgpu")


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


@needs_adapter
def test_graph_on_wgpu_matches_cpu_and_skips_prepacking():
    g = _mlp_graph()
    cpu, gpu = g.compile(device="cpu"), g.compile(device="wgpu")
    assert gpu.device == "wgpu"
    assert "prepacked" not in gpu.summary() and "prepacked" in cpu.summary()
    for batch in (1, 9, 300):
        x = np.random.default_rng(batch).standard_normal((batch, 33)).astype(np.float32)
        want, got = cpu.run({"x": x})["y"].numpy(), gpu.run({"x": x})["y"].numpy()
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    # Per-node profiling times the CPU executor only.
    with pytest.raises(rt.UnsupportedError, match="profiling.*'wgpu'"):
        gpu.enable_profiling()


@needs_adapter
def test_bad_embedding_ids_raise():
    g = rt.Graph()
    ids = g.input("ids", (3,), "i64")
    g.output("y", g.embedding(g.constant(np.ones((4, 2), np.float32)), ids))
    m = g.compile(device="wgpu")
    np.testing.assert_array_equal(m.run({"ids": np.array([0, 3, 1])})["y"].numpy(), np.ones((3, 2)))
    with pytest.raises(IndexError):
        m.run({"ids": np.array([0, 4, 1])})


@needs_adapter
@pytest.mark.parametrize("name", ["tiny_bert", "tiny_bert_gelu_new", "tiny_bert_type_vocab_1"])
def test_tiny_bert_on_wgpu_matches_cpu(name):
    cpu, gpu = rt.load(FIXTURES / name), rt.load(FIXTURES / name, device="wgpu")
    texts = ["hello world", "a somewhat longer sentence to embed on the gpu", ""]
    np.testing.assert_allclose(gpu.embed(texts), cpu.embed(texts), atol=1e-5)


DECODERS = sorted(p.parent.name for p in FIXTURES.glob("tiny_*/golden_prompts.json"))


@needs_adapter
@pytest.mark.parametrize("name", DECODERS)
def test_tiny_decoder_greedy_tokens_on_wgpu_equal_cpu(name):
    folder = FIXTURES / name
    prompts = json.loads((folder / "golden_prompts.json").read_text(encoding="utf-8"))["prompts"]
    cpu, gpu = rt.load(folder), rt.load(folder, device="wgpu")
    assert gpu.device == "wgpu"
    for p in prompts:
        want = cpu.generate(p["input_ids"], max_tokens=8, ignore_eos=True).token_ids
        got = gpu.generate(p["input_ids"], max_tokens=8, ignore_eos=True).token_ids
        assert got == want, p["name"]
        logits_cpu = cpu.forward(np.asarray([p["input_ids"]]))
        logits_gpu = gpu.forward(np.asarray([p["input_ids"]]))
        assert np.abs(logits_gpu - logits_cpu).max() < 1e-4, p["name"]


@needs_adapter
def test_tiny_decoder_bf16_weights_on_wgpu():
    folder = FIXTURES / DECODERS[0]
    prompt = json.loads((folder / "golden_prompts.json").read_text(encoding="utf-8"))["prompts"][0]
    cpu, gpu = rt.load(folder, dtype="bf16"), rt.load(folder, device="wgpu", dtype="bf16")
    a = cpu.forward(np.asarray([prompt["input_ids"]]))
    b = gpu.forward(np.asarray([prompt["input_ids"]]))
    assert np.abs(a - b).max() < 2e-2 * max(1.0, np.abs(a).max())


@needs_adapter
def test_minilm_on_wgpu_matches_the_golden_file(minilm_dir):
    folder = FIXTURES / "minilm_golden"
    sentences = json.loads((folder / "sentences.json").read_text(encoding="utf-8"))
    with np.load(folder / "golden.npz") as z:
        golden = z["embeddings"]
    model = rt.load(minilm_dir, device="wgpu")
    cos = _cosines(model.embed(sentences), golden)
    assert cos.min() >= 0.999, cos.min()
