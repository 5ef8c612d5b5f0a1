"""The graph builder, compiled runs against the eager ops, build-time errors,
concurrency, cancellation, memory plans and summaries."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    # Without passes the summary lists every node as built.
    s = g.compile(optimize=False).summary()
    for i in range(len(g)):
        assert f"%{i} = " in s, s
    assert "passes: none" in s
    # With them it lists the nodes after the passes, and what each pass did.
    s = m.summary()
    for op in ("embedding", "linear", "attention", "layer_norm", "reshape", "mean"):
        assert op in s
    assert "flops=" in s and "planned_bytes=" in s
    assert "pass dce:" in s and "pass prepack_weights:" in s, s


def test_profile_counts_every_node_of_the_profiled_runs_only():
    rng = np.random.default_rng(3)
    m = build_mlp(mlp_params(rng))
    x = randn(rng, 5, 16, scale=1.0)
    m.run({"x": x})  # not profiled
    assert m.profile() == [] and m.profile(by="node") == []
    m.enable_profiling()
    for _ in range(3):
        m.run({"x": x})
    nodes = m.profile(by="node")
    ops = m.profile()
    # Every node the optimized program runs is timed, three times; the summary names them.
    summary = m.summary()
    assert nodes and all(n["calls"] == 3 and n["seconds"] >= 0 for n in nodes)
    for n in nodes:
        assert f"%{n['node']} = {n['op']}" in summary, (n, summary)
    assert {"linear", "softmax", "input"} <= {o["op"] for o in ops}
    assert sum(o["nodes"] for o in ops) == len(nodes)
    assert sum(o["calls"] for o in ops) == 3 * len(nodes)
    assert abs(sum(o["share"] for o in ops) - 1.0) < 1e-9
    assert [o["seconds"] for o in ops] == sorted((o["seconds"] for o in ops), reverse=True)
    # Off: later runs add nothing; reset forgets.
    m.enable_profiling(False)
    m.run({"x": x})
    assert all(n["calls"] == 3 for n in m.profile(by="node"))
    m.reset_profile()
    assert m.profile() == []
    with pytest.raises(ValueError, match="'op' or 'node'"):
        m.profile(by="layer")


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


# --- every eager op as a graph node, against the eager op ---------------------------------

BINARY = ("add", "sub", "mul", "div", "maximum", "minimum", "pow")
UNARY = ("exp", "log", "tanh", "erf", "gelu", "gelu_tanh", "silu", "relu", "sigmoid", "sqrt", "rsqrt", "neg", "abs")
POSITIVE_ONLY = {"log", "sqrt", "rsqrt"}


def run_graph(build, **arrays) -> dict[str, np.ndarray]:
    """Declares one input per array (static shapes), builds with `build(g, **values)`
    returning a Value or a dict of them, compiles, runs, returns numpy outputs."""
    g = rt.Graph()
    values = {name: g.input(name, a.shape, np_dtype_name(a)) for name, a in arrays.items()}
    out = build(g, **values)
    outs = out if isinstance(out, dict) else {"y": out}
    for name, v in outs.items():
        g.output(name, v)
    got = g.compile().run(arrays)
    return {name: t.numpy() for name, t in got.items()}


def np_dtype_name(a: np.ndarray) -> str:
    return {"float32": "f32", "float64": "f64", "int64": "i64", "int32": "i32", "bool": "bool"}[str(a.dtype)]


@pytest.mark.parametrize("op", BINARY)
@pytest.mark.parametrize("sa,sb", [((7,), (7,)), ((3, 17), (17,)), ((2, 1, 33), (5, 1)), ((1,), (9, 1))])
def test_binary_nodes_match_eager(op, sa, sb):
    rng = np.random.default_rng(10)
    a = rng.uniform(0.1, 2.0, sa).astype(np.float32)
    b = rng.uniform(-1.5, 1.5, sb).astype(np.float32)
    got = run_graph(lambda g, a, b: getattr(g, op)(a, b), a=a, b=b)["y"]
    want = getattr(rt, op)(a, b).numpy()
    assert got.shape == np.broadcast_shapes(sa, sb)
    np.testing.assert_array_equal(got, want)
    # A Python scalar takes the Value's dtype; a numpy array becomes a constant.
    got = run_graph(lambda g, a: getattr(g, op)(a, 0.75), a=a)["y"]
    np.testing.assert_array_equal(got, getattr(rt, op)(a, 0.75).numpy())
    got = run_graph(lambda g, a: getattr(g, op)(b, a), a=a)["y"]
    np.testing.assert_array_equal(got, getattr(rt, op)(b, a).numpy())


def test_integer_binary_and_unary_nodes():
    a = np.array([[-3, 7, 0], [2147483647, -5, 4]], np.int32)
    b = np.array([1, -7, 2], np.int32)
    got = run_graph(
        lambda g, a, b: {"max": g.maximum(a, b), "min": g.minimum(a, 2), "neg": g.neg(a), "abs": g.abs(a), "relu": g.relu(a)},
        a=a,
        b=b,
    )
    np.testing.assert_array_equal(got["max"], np.maximum(a, b))
    np.testing.assert_array_equal(got["min"], np.minimum(a, 2))
    for name in ("neg", "abs", "relu"):
        assert got[name].dtype == np.int32
        np.testing.assert_array_equal(got[name], getattr(rt, name)(a).numpy())


@pytest.mark.parametrize("op", UNARY)
@pytest.mark.parametrize("shape", [(1,), (7, 3), (3, 257), (2, 5, 33)])
def test_unary_nodes_match_eager(op, shape):
    rng = np.random.default_rng(11)
    x = rng.uniform(1e-3, 4.0, shape) if op in POSITIVE_ONLY else rng.standard_normal(shape) * 3
    x = x.astype(np.float32)
    g = rt.Graph()
    v = g.input("x", ("n", *shape[1:]))
    g.output("y", getattr(g, op)(v))
    got = g.compile().run({"x": x})["y"].numpy()
    np.testing.assert_array_equal(got, getattr(rt, op)(x).numpy())


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_log_softmax_node_matches_eager(axis):
    x = (np.random.default_rng(12).standard_normal((3, 17, 5)) * 10).astype(np.float32)
    got = run_graph(lambda g, x: g.log_softmax(x, axis=axis), x=x)["y"]
    np.testing.assert_array_equal(got, rt.log_softmax(x, axis=axis).numpy())


@pytest.mark.parametrize("op", ["sum", "mean", "max", "min", "argmax"])
@pytest.mark.parametrize("axis,keepdims", [(None, False), (None, True), (0, False), (-1, True), (1, False)])
@pytest.mark.parametrize("dtype", [np.float32, np.int32])
def test_reduction_nodes_match_eager(op, axis, keepdims, dtype):
    x = (np.random.default_rng(13).standard_normal((3, 17, 5)) * 50).astype(dtype)
    g = rt.Graph()
    v = g.input("x", ("batch", 17, 5), np_dtype_name(x))
    y = getattr(g, op)(v, axis=axis, keepdims=keepdims)
    g.output("y", y)
    got = g.compile().run({"x": x})["y"].numpy()
    want = getattr(rt, op)(x, axis=axis, keepdims=keepdims).numpy()
    assert y.dtype == np_dtype_name(want) and got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got, getattr(np, op)(x, axis=axis, keepdims=keepdims), rtol=1e-5, atol=1e-4)


def test_where_and_masked_fill_nodes_broadcast():
    rng = np.random.default_rng(14)
    a = rng.standard_normal((2, 5, 33)).astype(np.float32)
    b = rng.standard_normal((33,)).astype(np.float32)
    cond = rng.random((5, 1)) < 0.5
    mask = rng.random((2, 1, 33)) < 0.3
    g = rt.Graph()
    va, vb = g.input("a", ("batch", 5, 33)), g.input("b", (33,))
    vc, vm = g.input("cond", (5, 1), "bool"), g.input("mask", ("batch", 1, 33), "bool")
    g.output("where", g.where(vc, va, vb))
    g.output("where_scalar", g.where(vc, -1.0, va))
    g.output("filled", g.masked_fill(va, vm, float("-inf")))
    out = g.compile().run({"a": a, "b": b, "cond": cond, "mask": mask})
    np.testing.assert_array_equal(out["where"].numpy(), rt.where(cond, a, b).numpy())
    np.testing.assert_array_equal(out["where"].numpy(), np.where(cond, a, b))
    np.testing.assert_array_equal(out["where_scalar"].numpy(), np.where(cond, np.float32(-1), a))
    np.testing.assert_array_equal(out["filled"].numpy(), rt.masked_fill(a, mask, float("-inf")).numpy())
    np.testing.assert_array_equal(out["filled"].numpy(), np.where(mask, -np.inf, a).astype(np.float32))


@pytest.mark.parametrize("k,axis,largest", [(1, -1, True), (5, -1, False), (3, 0, True), (17, 1, True), (0, 1, False)])
def test_topk_node_returns_values_and_indices(k, axis, largest):
    x = np.random.default_rng(15).permutation(3 * 17 * 9).reshape(3, 17, 9).astype(np.float32)
    g = rt.Graph()
    v = g.input("x", (3, 17, 9))
    values, indices = g.topk(v, k, axis=axis, largest=largest)
    assert values.dtype == "f32" and indices.dtype == "i64"
    g.output("values", values)
    g.output("indices", indices)
    out = g.compile().run({"x": x})
    want_v, want_i = rt.topk(x, k, axis=axis, largest=largest)
    np.testing.assert_array_equal(out["values"].numpy(), want_v.numpy())
    np.testing.assert_array_equal(out["indices"].numpy(), want_i.numpy())
    order = np.argsort(-x if largest else x, axis=axis, kind="stable")
    np.testing.assert_array_equal(out["indices"].numpy(), np.take(order, range(k), axis=axis))


@given(
    n=st.integers(1, 40),
    start=st.none() | st.integers(-50, 50),
    stop=st.none() | st.integers(-50, 50),
    step=st.integers(-5, 5).filter(lambda s: s != 0),
    axis=st.sampled_from([0, 1, -1]),
)
@settings(max_examples=60, deadline=None)
def test_slice_node_follows_numpy(n, start, stop, step, axis):
    shape = [3, 3]
    shape[axis] = n
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    g = rt.Graph()
    v = g.input("x", tuple(shape))
    y = g.slice(v, axis, start, stop, step)
    g.output("y", y)
    got = g.compile().run({"x": x})["y"].numpy()
    index = [slice(None)] * 2
    index[axis] = slice(start, stop, step)
    want = x[tuple(index)]
    assert y.shape == want.shape
    np.testing.assert_array_equal(got, want)
    assert got.flags["C_CONTIGUOUS"]


def test_slice_splits_a_fused_qkv_projection():
    rng = np.random.default_rng(16)
    hidden = 24
    w = rng.standard_normal((3 * hidden, hidden)).astype(np.float32)
    x = rng.standard_normal((2, 7, hidden)).astype(np.float32)
    g = rt.Graph()
    qkv = g.linear(g.input("x", ("batch", "seq", hidden)), g.constant(w))
    parts = {name: g.slice(qkv, -1, i * hidden, (i + 1) * hidden) for i, name in enumerate("qkv")}
    for name, v in parts.items():
        assert v.shape == ("batch", "seq", hidden)
        g.output(name, v)
    out = g.compile().run({"x": x})
    full = rt.linear(x, w).numpy()
    for i, name in enumerate("qkv"):
        np.testing.assert_array_equal(out[name].numpy(), full[..., i * hidden : (i + 1) * hidden])


@pytest.mark.parametrize(
    "case",
    ["plain", "offset", "positions_2d", "positions_1d_i32", "rotary_dim", "inv_freq"],
)
@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_node_matches_eager(case, interleaved):
    rng = np.random.default_rng(17)
    b, s, h, d = 2, 7, 3, 14
    x = rng.standard_normal((b, s, h, d)).astype(np.float32)
    pos2 = rng.integers(0, 5000, (b, s))
    pos1 = rng.integers(0, 5000, (s,)).astype(np.int32)
    inv = rng.uniform(0.01, 1.0, (5,)).astype(np.float32)
    eager = {
        "plain": {},
        "offset": {"offset": 1234},
        "positions_2d": {"positions": pos2, "theta": 500000.0},
        "positions_1d_i32": {"positions": pos1},
        "rotary_dim": {"rotary_dim": 6, "offset": 3},
        "inv_freq": {"inv_freq": inv, "rotary_dim": 10, "positions": pos2},
    }[case]
    g = rt.Graph()
    kwargs = dict(eager)
    inputs = {"x": x}
    if "positions" in kwargs:
        p = kwargs["positions"]
        kwargs["positions"] = g.input("pos", ("batch", "seq")[-p.ndim :], np_dtype_name(p))
        inputs["pos"] = p
    xv = g.input("x", ("batch", "seq", h, d))
    g.output("y", g.rope(xv, interleaved=interleaved, **kwargs))
    got = g.compile().run(inputs)["y"].numpy()
    want = rt.rope(x, interleaved=interleaved, **eager).numpy()
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mask_dtype", ["bool", "i64", "i32"])
def test_attention_node_with_key_padding_mask_matches_eager(causal, mask_dtype):
    rng = np.random.default_rng(18)
    b, sq, sk, hq, hkv, d = 3, 5, 9, 4, 2, 8
    q = rng.standard_normal((b, sq, hq, d)).astype(np.float32)
    k = rng.standard_normal((b, sk, hkv, d)).astype(np.float32)
    v = rng.standard_normal((b, sk, hkv, d)).astype(np.float32)
    lengths = np.array([9, 4, 1])
    mask = (np.arange(sk)[None, :] < lengths[:, None]).astype({"bool": bool, "i64": np.int64, "i32": np.int32}[mask_dtype])
    g = rt.Graph()
    qv = g.input("q", ("batch", "seq", hq, d))
    kv = g.input("k", ("batch", "kv_seq", hkv, d))
    vv = g.input("v", ("batch", "kv_seq", hkv, d))
    mv = g.input("mask", ("batch", "kv_seq"), mask_dtype)
    g.output("y", g.attention(qv, kv, vv, causal=causal, scale=0.3, key_padding_mask=mv))
    got = g.compile().run({"q": q, "k": k, "v": v, "mask": mask})["y"].numpy()
    want = rt.attention(q, k, v, causal=causal, scale=0.3, mask=mask).numpy()
    np.testing.assert_array_equal(got, want)


def test_new_nodes_reject_bad_operands_at_build_time():
    g = rt.Graph()
    x = g.input("x", ("batch", 33))
    i = g.input("i", ("batch", 33), "i64")
    with pytest.raises(rt.DTypeError, match="pow"):
        g.pow(i, i)
    with pytest.raises(rt.DTypeError, match="sqrt"):
        g.sqrt(i)
    with pytest.raises(rt.DTypeError, match="float scalar.*i64"):
        g.maximum(i, 0.5)
    assert g.maximum(i, 2).dtype == "i64"
    with pytest.raises(rt.ShapeError, match=r"maximum.*\[batch, 33\].*\[5\]"):
        g.maximum(x, np.ones(5, np.float32))
    with pytest.raises(rt.DTypeError, match="log_softmax"):
        g.log_softmax(i)
    with pytest.raises(rt.ShapeError, match="argmax"):
        g.argmax(x, axis=2)
    with pytest.raises(rt.ShapeError, match=r"max.*\[batch, 0\]"):
        g.max(g.input("empty", ("batch", 0)), axis=-1)
    cond = g.input("cond", ("seq", 1), "bool")
    with pytest.raises(rt.ShapeError, match=r"where.*\[seq, 1\].*\[batch, 33\]"):
        g.where(cond, x, x)
    with pytest.raises(rt.DTypeError, match="where.*bool"):
        g.where(x, x, x)
    with pytest.raises(rt.DTypeError, match="where"):
        g.where(g.input("c2", ("batch", 1), "bool"), x, i)
    with pytest.raises(rt.ShapeError, match=r"masked_fill.*\[batch, 33\].*\[33\]"):
        g.masked_fill(g.input("row", (33,)), g.input("m", ("batch", 33), "bool"), 0.0)
    with pytest.raises(rt.DTypeError, match="masked_fill"):
        g.masked_fill(x, x, 0.0)
    with pytest.raises(rt.ShapeError, match=r"topk.*k=34.*\[batch, 33\]"):
        g.topk(x, 34)
    with pytest.raises(rt.UnsupportedError, match=r"topk.*'batch'"):
        g.topk(x, 1, axis=0)
    with pytest.raises(rt.ShapeError, match=r"slice.*zero"):
        g.slice(x, 1, 0, 5, 0)
    with pytest.raises(rt.UnsupportedError, match=r"slice.*'batch'"):
        g.slice(x, 0, 1, None)
    assert g.slice(x, 0, None, None).shape == ("batch", 33)
    h = g.input("h", ("batch", "seq", 4, 16))
    with pytest.raises(rt.ShapeError, match=r"rope.*rotary_dim 5"):
        g.rope(h, rotary_dim=5)
    with pytest.raises(rt.ShapeError, match=r"rope.*\[batch, other\].*\[batch, seq, 4, 16\]"):
        g.rope(h, positions=g.input("p", ("batch", "other"), "i64"))
    with pytest.raises(rt.DTypeError, match=r"rope.*positions"):
        g.rope(h, positions=g.input("pf", ("seq",), "f32"))
    with pytest.raises(rt.ShapeError, match=r"rope.*inv_freq.*\[8\]"):
        g.rope(h, inv_freq=np.ones(3, np.float32))
    kv = g.input("kv", ("batch", "kv_seq", 2, 16))
    with pytest.raises(rt.ShapeError, match=r"attention.*key_padding_mask.*\[batch, kv_seq\].*\[batch, seq\]"):
        g.attention(h, kv, kv, key_padding_mask=g.input("bad_mask", ("batch", "seq"), "bool"))
    with pytest.raises(rt.DTypeError, match="attention.*key_padding_mask"):
        g.attention(h, kv, kv, key_padding_mask=g.input("float_mask", ("batch", "kv_seq"), "f32"))


def test_summary_names_the_new_ops_and_their_attributes():
    g = rt.Graph()
    x = g.input("x", ("batch", 33))
    values, indices = g.topk(x, 3, largest=False)
    g.output("v", values)
    g.output("i", indices)
    g.output("s", g.slice(x, 1, 2, -1, 3))
    g.output("l", g.log_softmax(x))
    g.output("a", g.argmax(x, axis=1))
    g.output("f", g.masked_fill(x, g.input("m", ("batch", 1), "bool"), -1.5))
    s = g.compile().summary()
    for text in (
        "topk(%0) k=3, axis=1, largest=false, output=values -> f32[batch, 3]",
        "output=indices -> i64[batch, 3]",
        "slice(%0) axis=1, 2:-1:3 -> f32[batch, 10]",
        "log_softmax(%0) axis=-1",
        "argmax(%0) axis=1, keepdims=false -> i64[batch]",
        "masked_fill(%0, %",
        "value=-1.5",
    ):
        assert text in s, s
