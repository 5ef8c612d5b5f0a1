"""The graph builder, compiled runs against the eager ops, build-time errors,
concurrency, cancellation, memory plans and summaries."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import rtserve as rt
from conftest import run_in_threads

RTOL, ATOL = 1e-5, 1e-6


def randn(rng: np.random.Generator, *shape: int, scale: float = 0.1) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# --- a small MLP ---------------------------------------------------------------------------


def mlp_params(rng):
    return {
        "w1": randn(rng, 32, 16),
        "b1": randn(rng, 32),
        "w2": randn(rng, 10, 32),
        "b2": randn(rng, 10),
    }


def build_mlp(p) -> rt.Compiled:
    g = rt.Graph()
    x = g.input("x", ("batch", 16), "f32")
    h = g.linear(x, g.constant(p["w1"]), g.constant(p["b1"]), activation="gelu")
    y = g.softmax(g.linear(h, g.constant(p["w2"]), g.constant(p["b2"])), axis=-1)
    g.output("y", y)
    return g.compile(device="cpu")


def eager_mlp(p, x):
    h = rt.linear(x, p["w1"], p["b1"], activation="gelu")
    return rt.softmax(rt.linear(h, p["w2"], p["b2"]), axis=-1).numpy()


def test_mlp_matches_eager_at_two_batch_sizes():
    rng = np.random.default_rng(0)
    p = mlp_params(rng)
    m = build_mlp(p)
    assert m.symbols == ["batch"]
    for batch in (1, 7):
        x = randn(rng, batch, 16, scale=1.0)
        out = m.run({"x": x})
        assert set(out) == {"y"}
        y = out["y"].numpy()
        assert y.shape == (batch, 10)
        np.testing.assert_allclose(y, eager_mlp(p, x), rtol=RTOL, atol=ATOL)


# --- a 2-layer BERT-like encoder ----------------------------------------------------------

HIDDEN, HEADS, FFN, VOCAB = 64, 4, 128, 50


def bert_params(rng):
    layers = []
    for _ in range(2):
        layers.append(
            {
                name: randn(rng, *shape)
                for name, shape in {
                    "wq": (HIDDEN, HIDDEN),
                    "bq": (HIDDEN,),
                    "wk": (HIDDEN, HIDDEN),
                    "bk": (HIDDEN,),
                    "wv": (HIDDEN, HIDDEN),
                    "bv": (HIDDEN,),
                    "wo": (HIDDEN, HIDDEN),
                    "bo": (HIDDEN,),
                    "ln1_w": (HIDDEN,),
                    "ln1_b": (HIDDEN,),
                    "w_up": (FFN, HIDDEN),
                    "b_up": (FFN,),
                    "w_down": (HIDDEN, FFN),
                    "b_down": (HIDDEN,),
                    "ln2_w": (HIDDEN,),
                    "ln2_b": (HIDDEN,),
                }.items()
            }
        )
        layers[-1]["ln1_w"] += 1.0
        layers[-1]["ln2_w"] += 1.0
    return {"emb": randn(rng, VOCAB, HIDDEN, scale=1.0), "layers": layers}


def build_bert(p) -> tuple[rt.Graph, rt.Compiled]:
    g = rt.Graph()
    ids = g.input("ids", ("batch", "seq"), "i64")
    h = g.embedding(g.constant(p["emb"]), ids)
    for lp in p["layers"]:
        c = {k: g.constant(v) for k, v in lp.items()}

        def heads(t):
            return g.reshape(t, ("batch", "seq", HEADS, -1))

        q = heads(g.linear(h, c["wq"], c["bq"]))
        k = heads(g.linear(h, c["wk"], c["bk"]))
        v = heads(g.linear(h, c["wv"], c["bv"]))
        a = g.reshape(g.attention(q, k, v), ("batch", "seq", HIDDEN))
        h = g.layer_norm(g.add(h, g.linear(a, c["wo"], c["bo"])), c["ln1_w"], c["ln1_b"], eps=1e-12)
        f = g.linear(g.linear(h, c["w_up"], c["b_up"], activation="gelu"), c["w_down"], c["b_down"])
        h = g.layer_norm(g.add(h, f), c["ln2_w"], c["ln2_b"], eps=1e-12)
    assert h.shape == ("batch", "seq", HIDDEN) and h.dtype == "f32"
    g.output("hidden", h)
    g.output("pooled", g.mean(h, axis=1))
    return g, g.compile()


def eager_bert(p, ids):
    b, s = ids.shape
    h = rt.embedding(p["emb"], ids)
    for lp in p["layers"]:

        def heads(t):
            return t.numpy().reshape(b, s, HEADS, -1)

        q = heads(rt.linear(h, lp["wq"], lp["bq"]))
        k = heads(rt.linear(h, lp["wk"], lp["bk"]))
        v = heads(rt.linear(h, lp["wv"], lp["bv"]))
        a = rt.attention(q, k, v).numpy().reshape(b, s, HIDDEN)
        h = rt.layer_norm(rt.add(h, rt.linear(a, lp["wo"], lp["bo"])), lp["ln1_w"], lp["ln1_b"], eps=1e-12)
        f = rt.linear(rt.linear(h, lp["w_up"], lp["b_up"], activation="gelu"), lp["w_down"], lp["b_down"])
        h = rt.layer_norm(rt.add(h, f), lp["ln2_w"], lp["ln2_b"], eps=1e-12)
    return h.numpy(), rt.mean(h, axis=1).numpy()


@pytest.fixture(scope="module")
def bert():
    p = bert_params(np.random.default_rng(1))
    g, m = build_bert(p)
    return p, g, m


def test_bert_block_matches_eager_at_two_shapes(bert):
    p, _, m = bert
    rng = np.random.default_rng(2)
    for batch, seq in ((2, 5), (3, 17)):
        ids = rng.integers(0, VOCAB, size=(batch, seq), dtype=np.int64)
        out = m.run({"ids": ids})
        hidden, pooled = eager_bert(p, ids)
        assert out["hidden"].shape == (batch, seq, HIDDEN)
        np.testing.assert_allclose(out["hidden"].numpy(), hidden, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(out["pooled"].numpy(), pooled, rtol=RTOL, atol=ATOL)


def test_four_threads_share_one_compiled(bert):
    _, _, m = bert
    ids = np.random.default_rng(3).integers(0, VOCAB, size=(4, 33), dtype=np.int64)
    expected = m.run({"ids": ids})["hidden"].numpy().copy()

    def worker(n: int) -> list[str]:
        return [
            f"thread {n} differs"
            for _ in range(5)
            if not np.array_equal(m.run({"ids": ids})["hidden"].numpy(), expected)
        ]

    errors = run_in_threads(worker)
    assert not errors, errors


def test_memory_plan_and_summary(bert):
    _, g, m = bert
    for batch, seq in ((1, 8), (8, 128)):
        plan = m.memory_plan(batch=batch, seq=seq)
        assert plan["lower_bound_bytes"] <= plan["planned_bytes"] <= plan["naive_bytes"]
        assert plan["planned_bytes"] < plan["naive_bytes"]
    small, big = m.memory_plan(batch=1, seq=8), m.memory_plan(batch=8, seq=128)
    assert big["planned_bytes"] > small["planned_bytes"]
    with pytest.raises(rt.ShapeError, match="seq"):
        m.memory_plan(batch=1)
    with pytest.raises(rt.ShapeError, match="bacth"):
        m.memory_plan(bacth=1, seq=1)
    s = m.summary()
    for i in range(len(g)):
        assert f"%{i} = " in s, s
    for op in ("embedding", "linear", "attention", "layer_norm", "reshape", "mean"):
        assert op in s
    assert "flops=" in s and "planned_bytes=" in s


# --- build-time and run-time errors ------------------------------------------------------


def test_build_errors_raise_at_once_naming_op_and_shapes():
    g = rt.Graph()
    x = g.input("x", ("batch", 384))
    w = g.constant(np.zeros((500, 10), np.float32))
    with pytest.raises(rt.ShapeError, match=r"matmul.*\[batch, 384\].*\[500, 10\]"):
        g.matmul(x, w)
    with pytest.raises(rt.ShapeError, match=r"linear.*\[batch, 384\]"):
        g.linear(x, w)
    i = g.input("i", ("batch", 384), "i64")
    with pytest.raises(rt.DTypeError, match="add"):
        g.add(x, i)
    y = g.input("y", ("seq", 384))
    with pytest.raises(rt.ShapeError, match=r"add.*batch.*seq"):
        g.add(x, y)
    with pytest.raises(rt.ShapeError, match="reshape"):
        g.reshape(x, (-1, 7))
    with pytest.raises(rt.ShapeError, match="softmax"):
        g.softmax(x, axis=2)
    with pytest.raises(ValueError, match="another Graph"):
        rt.Graph().relu(x)
    with pytest.raises(rt.DeviceError, match="cpu"):
        g.compile(device="cuda")
    with pytest.raises(rt.ShapeError, match="no outputs"):
        g.compile()


def test_values_expose_symbolic_shapes_and_scalars_take_the_dtype():
    g = rt.Graph()
    x = g.input("x", ("batch", "seq", 8))
    y = g.mul(g.transpose(x, (1, 0, 2)), 0.5)
    assert y.shape == ("seq", "batch", 8) and y.dtype == "f32"
    g.output("y", y)
    arr = np.arange(2 * 3 * 8, dtype=np.float32).reshape(2, 3, 8)
    got = g.compile().run({"x": arr})["y"].numpy()
    np.testing.assert_array_equal(got, arr.transpose(1, 0, 2) * 0.5)


def test_run_errors_name_the_input():
    g = rt.Graph()
    x = g.input("x", ("batch", 4))
    z = g.input("z", ("batch", 1))
    g.output("y", g.add(x, z))
    m = g.compile()
    ok = {"x": np.zeros((2, 4), np.float32), "z": np.zeros((2, 1), np.float32)}
    assert m.run(ok)["y"].shape == (2, 4)
    with pytest.raises(rt.ShapeError, match="unknown input 'w'"):
        m.run({**ok, "w": np.zeros(1, np.float32)})
    with pytest.raises(rt.ShapeError, match="missing input 'z'"):
        m.run({"x": ok["x"]})
    with pytest.raises(rt.ShapeError, match=r"'x'.*\[batch, 4\].*\[2, 5\]"):
        m.run({**ok, "x": np.zeros((2, 5), np.float32)})
    with pytest.raises(rt.ShapeError, match=r"'z'.*batch = 3.*batch = 2"):
        m.run({**ok, "z": np.zeros((3, 1), np.float32)})
    with pytest.raises(rt.DTypeError, match="'x'"):
        m.run({**ok, "x": np.zeros((2, 4), np.float64)})


# --- cancellation -------------------------------------------------------------------------


def long_graph(nodes: int) -> rt.Compiled:
    g = rt.Graph()
    h = g.input("x", ("n",))
    for _ in range(nodes):
        h = g.tanh(h)
    g.output("y", h)
    return g.compile()


def test_cancel_token_and_deadline_raise_cancelled_error():
    m = long_graph(300)
    x = np.linspace(-1, 1, 200_000, dtype=np.float32)
    token = rt.CancelToken()
    token.cancel()
    assert token.cancelled
    with pytest.raises(rt.CancelledError):
        m.run({"x": x}, cancel=token)
    t0 = time.perf_counter()
    m.run({"x": x[:1000]})
    with pytest.raises(rt.CancelledError, match="deadline"):
        m.run({"x": x}, timeout=1e-4)
    assert time.perf_counter() - t0 < 60
    with pytest.raises(ValueError, match="timeout"):
        m.run({"x": x}, timeout=-1.0)


def test_cancel_from_another_thread_stops_a_run():
    m = long_graph(3000)
    x = np.linspace(-1, 1, 200_000, dtype=np.float32)
    token = rt.CancelToken()
    result: list[BaseException | None] = []

    def runner() -> None:
        try:
            m.run({"x": x}, cancel=token)
            result.append(None)
        except BaseException as e:  # noqa: BLE001 (checked below)
            result.append(e)

    t = threading.Thread(target=runner)
    t.start()
    time.sleep(0.02)
    token.cancel()
    t.join(timeout=120)
    assert not t.is_alive()
    assert isinstance(result[0], rt.CancelledError), result


def test_devices_registry_and_compiled_device():
    devs = rt.devices()
    cpu = [d for d in devs if d["name"] == "cpu"]
    assert cpu and cpu[0]["available"] and rt.isa() in cpu[0]["description"]
    g = rt.Graph()
    x = g.input("x", ("n",), "f32")
    g.output("y", g.exp(x))
    m = g.compile(device="cpu")
    assert m.device == "cpu"
    with pytest.raises(rt.DeviceError, match="available: cpu"):
        g.compile(device="nonexistent-accelerator")
