"""Elementwise ops (binary with broadcasting, unary math) against numpy float64, on every ISA tier.

Tolerances (f32): add/sub/mul/div/max/min exact (one IEEE rounding, like numpy f32);
exp/log/tanh/erf/sigmoid within atol 1e-6 + rtol 3e-6 of the f64 value; gelu/silu likewise.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rtserve as rt

ODD = [1, 7, 17, 33, 127, 257]
erf64 = np.vectorize(math.erf, otypes=[np.float64])

UNARY_REF = {
    "exp": np.exp,
    "log": np.log,
    "tanh": np.tanh,
    "erf": erf64,
    "gelu": lambda x: 0.5 * x * (1 + erf64(x / math.sqrt(2))),
    "gelu_tanh": lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
    "silu": lambda x: x / (1 + np.exp(-x)),
    "relu": lambda x: np.maximum(x, 0),
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "sqrt": np.sqrt,
    "rsqrt": lambda x: 1 / np.sqrt(x),
    "neg": np.negative,
    "abs": np.abs,
}
POSITIVE_ONLY = {"log", "sqrt", "rsqrt"}


def each_isa():
    """Yields each ISA tier in turn (for hypothesis tests, which cannot take the fixture)."""
    before = rt.isa()
    try:
        for name in rt.available_isas():
            rt.set_isa(name)
            yield name
    finally:
        rt.set_isa(before)


def rng(seed=0):
    return np.random.default_rng(seed)


def f64(t):
    return np.asarray(t).astype(np.float64)


@pytest.mark.parametrize("name", sorted(UNARY_REF))
@pytest.mark.parametrize("n", ODD)
def test_unary_f32_matches_f64_reference(isa, name, n):
    x = rng(n).standard_normal(n).astype(np.float32) * 6
    if name in POSITIVE_ONLY:
        x = np.abs(x) + np.float32(1e-3)
    got = f64(getattr(rt, name)(x))
    want = UNARY_REF[name](x.astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=3e-6, atol=1e-6, err_msg=f"{name} on {isa}")


@pytest.mark.parametrize("name", ["exp", "tanh", "erf", "sigmoid", "gelu", "silu", "log"])
def test_unary_special_values(isa, name):
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-30, 88.0, -88.0, 200.0, -200.0], np.float32)
    with np.errstate(all="ignore"):
        want = UNARY_REF[name](x.astype(np.float64)).astype(np.float32).astype(np.float64)
    got = f64(getattr(rt, name)(x))
    keep = ~((name == "silu") & np.isinf(x))  # silu(+-inf): inf*sigmoid; only the sign matters
    np.testing.assert_allclose(got[keep], want[keep], rtol=3e-6, atol=1e-6, equal_nan=True)


@given(
    st.integers(1, 40),
    st.integers(1, 40),
    st.sampled_from([-6.0, 0.5, 30.0]),
    st.randoms(use_true_random=False),
)
@settings(max_examples=30, deadline=None)
def test_unary_hypothesis_odd_shapes(rows, cols, scale, r):
    x = (np.random.default_rng(r.randint(0, 2**32)).standard_normal((rows, cols)) * scale).astype(np.float32)
    for tier in each_isa():
        for name in ("exp", "tanh", "erf", "gelu"):
            with np.errstate(over="ignore"):
                want = UNARY_REF[name](x.astype(np.float64)).astype(np.float32)
            np.testing.assert_allclose(f64(getattr(rt, name)(x)), want, rtol=3e-6, atol=1e-6, err_msg=tier)


def test_unary_strided_f64_half_and_ints(isa):
    a = rng(1).standard_normal((9, 17)).astype(np.float32)
    np.testing.assert_allclose(f64(rt.exp(rt.tensor(a)[:, ::-2])), np.exp(a[:, ::-2].astype(np.float64)), rtol=3e-6)
    np.testing.assert_allclose(f64(rt.tanh(rt.tensor(a).T)), np.tanh(a.T.astype(np.float64)), rtol=3e-6, atol=1e-6)
    d = a.astype(np.float64)
    np.testing.assert_allclose(np.asarray(rt.erf(d)), erf64(d), rtol=1e-14, atol=1e-15)
    h = rt.gelu(rt.tensor(a).astype("f16"))
    assert h.dtype == "f16"
    np.testing.assert_allclose(f64(h), UNARY_REF["gelu"](a.astype(np.float16).astype(np.float64)), rtol=2e-3, atol=2e-3)
    i = np.array([-5, 0, 7, -(2**31)], np.int32)
    np.testing.assert_array_equal(np.asarray(rt.neg(i)), -i)
    np.testing.assert_array_equal(np.asarray(rt.abs(i)), np.abs(i))
    np.testing.assert_array_equal(np.asarray(rt.relu(i)), np.maximum(i, 0))
    with pytest.raises(rt.DTypeError, match="exp"):
        rt.exp(i)
    assert rt.exp(np.zeros((0, 3), np.float32)).shape == (0, 3)


BINARY = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "div": np.divide,
    "maximum": np.maximum,
    "minimum": np.minimum,
    "pow": np.power,
}


@pytest.mark.parametrize("name", sorted(BINARY))
@pytest.mark.parametrize(
    "sa,sb",
    [((257,), (257,)), ((7, 33), (33,)), ((17, 1), (1, 127)), ((3, 1, 5), (4, 1)), ((), (7,)), ((1,), ())],
)
def test_binary_broadcast_f32(isa, name, sa, sb):
    r = rng(len(sa) * 10 + len(sb))
    a = r.standard_normal(sa).astype(np.float32)
    b = r.standard_normal(sb).astype(np.float32)
    if name == "pow":
        a = np.abs(a) + np.float32(0.1)
    with np.errstate(all="ignore"):
        want = BINARY[name](a, b)  # numpy f32: one rounding, same as rtserve
    got = np.asarray(getattr(rt, name)(a, b))
    assert got.shape == want.shape and got.dtype == np.float32
    if name == "pow":
        np.testing.assert_allclose(got, want, rtol=2e-6)
    else:
        np.testing.assert_array_equal(got, want)


@given(
    st.lists(st.integers(1, 9), min_size=1, max_size=4),
    st.lists(st.booleans(), min_size=4, max_size=4),
    st.integers(0, 2**31),
)
@settings(max_examples=40, deadline=None)
def test_binary_hypothesis_broadcast_and_strides(shape, ones, seed):
    r = np.random.default_rng(seed)
    sb = [1 if o else d for d, o in zip(shape, ones)]
    a = r.standard_normal([d * 2 for d in shape]).astype(np.float32)[tuple(slice(None, None, -2) for _ in shape)]
    b = r.standard_normal(sb).astype(np.float32)
    want = a * b + b  # f32 like rtserve: two roundings
    for tier in each_isa():
        got = rt.add(rt.mul(rt.tensor(a), b), b)
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=tier)


def test_binary_dtypes_scalars_and_nan(isa):
    d = rng(3).standard_normal((5, 7))
    np.testing.assert_array_equal(np.asarray(rt.div(d, d.T[:, :5].T)), d / d.T[:, :5].T)
    i = np.array([[1, 2, 127]], np.int8)
    np.testing.assert_array_equal(np.asarray(rt.add(i, np.array([[1], [2]], np.int8))), i + np.array([[1], [2]], np.int8))
    for dt in (np.int64, np.int32, np.int16, np.uint8):
        x = np.arange(20, dtype=dt).reshape(4, 5)
        np.testing.assert_array_equal(np.asarray(rt.mul(x, x)), x * x)
        np.testing.assert_array_equal(np.asarray(rt.maximum(x, x[::-1])), np.maximum(x, x[::-1]))
    t = rt.tensor(np.array([1.0, np.nan, 3.0], np.float32))
    assert np.isnan(np.asarray(rt.maximum(t, 2.0))[1]) and np.isnan(np.asarray(rt.minimum(2.0, t))[1])
    assert np.isnan(np.asarray(t + 1)[1])
    np.testing.assert_array_equal(np.asarray(t * 2), np.array([2, np.nan, 6], np.float32))
    np.testing.assert_array_equal(np.asarray(1 - t), np.array([0, np.nan, -2], np.float32))
    np.testing.assert_array_equal(np.asarray(t / 2), np.array([0.5, np.nan, 1.5], np.float32))
    np.testing.assert_array_equal(np.asarray(2 / t), np.array([2, np.nan, 2 / 3], np.float32))
    np.testing.assert_array_equal(np.asarray(t**2), np.array([1, np.nan, 9], np.float32))
    np.testing.assert_array_equal(np.asarray(-t), -np.asarray(t))
    np.testing.assert_array_equal(np.asarray(abs(-t)), np.asarray(t))
    assert (t + 1).dtype == "f32"
    b16 = rt.tensor(np.ones(3, np.float32)).astype("bf16")
    assert (b16 + 1.5).dtype == "bf16"
    np.testing.assert_array_equal(np.asarray((b16 + 1.5).astype("f32")), [2.5] * 3)
    z = rt.add(np.zeros((0, 4), np.float32), np.ones(4, np.float32))
    assert z.shape == (0, 4)


def test_binary_errors_name_the_op():
    a = np.ones((2, 3), np.float32)
    with pytest.raises(rt.ShapeError, match=r"add.*\[2, 3\].*\[4\]"):
        rt.add(a, np.ones(4, np.float32))
    with pytest.raises(rt.DTypeError, match=r"mul.*f32.*f64"):
        rt.mul(a, np.ones(3))
    with pytest.raises(rt.DTypeError, match="div"):
        rt.div(np.ones(3, np.int32), np.ones(3, np.int32))
    with pytest.raises(rt.DTypeError, match="add"):
        rt.add(np.ones(3, np.int32), 1.5)
    with pytest.raises(TypeError):
        rt.tensor(a) + "x"
    assert rt.tensor(a).__add__(object()) is NotImplemented
