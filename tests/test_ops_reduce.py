"""Reductions and softmax against numpy float64 on every ISA tier.

Tolerances (f32): sum/mean rtol 2e-6 * sqrt(n) of sum(|x|) (lane accumulators, f64 block totals);
max/min/argmax exact; softmax atol 1e-6 + rtol 4e-6; log_softmax atol 4e-6.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rtserve as rt

ODD = [1, 7, 17, 33, 127, 257]


def each_isa():
    before = rt.isa()
    try:
        for name in rt.available_isas():
            rt.set_isa(name)
            yield name
    finally:
        rt.set_isa(before)


def check_sum(got, x64, axis, n):
    want = x64.sum(axis=axis)
    scale = np.abs(x64).sum(axis=axis)
    assert np.all(np.abs(np.asarray(got, np.float64) - want) <= 2e-6 * np.sqrt(max(n, 1)) * scale + 1e-30)


@pytest.mark.parametrize("shape", [(257,), (7, 33), (17, 1, 127), (3, 4, 5)])
@pytest.mark.parametrize("axis", [0, -1, None])
def test_reductions_f32(isa, shape, axis):
    x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32) * 10
    x64 = x.astype(np.float64)
    n = x.size if axis is None else x.shape[axis]
    check_sum(rt.sum(x, axis=axis), x64, axis, n)
    np.testing.assert_allclose(np.asarray(rt.mean(x, axis)), x64.mean(axis=axis), rtol=2e-6 * np.sqrt(n), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(rt.max(x, axis)), x.max(axis=axis))
    np.testing.assert_array_equal(np.asarray(rt.min(x, axis)), x.min(axis=axis))
    np.testing.assert_array_equal(np.asarray(rt.argmax(x, axis)), x.argmax(axis=axis))
    k = rt.sum(x, axis=axis, keepdims=True)
    assert k.shape == np.sum(x, axis=axis, keepdims=True).shape


def test_sum_is_accurate_for_long_rows(isa):
    x = np.random.default_rng(0).random(1_000_003).astype(np.float32)
    got = float(np.asarray(rt.sum(x)))
    want = x.astype(np.float64).sum()
    assert abs(got - want) / want < 1e-6  # a naive f32 loop is off by ~1e-4 here
    cols = rt.sum(x[:1_000_000].reshape(10_000, 100), axis=0)
    np.testing.assert_allclose(np.asarray(cols), x[:1_000_000].reshape(10_000, 100).astype(np.float64).sum(0), rtol=1e-6)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_long_rows_split_across_threads(isa, threads):
    """Fewer rows than threads, each over 2^18 elements: every row is reduced in parts on
    the pool; the parts combine to the same sum, mean, max and min, NaN included."""
    before = rt.num_threads()
    rt.set_num_threads(threads)
    try:
        rng = np.random.default_rng(threads)
        x = (rng.standard_normal((2, 300_007)) * 10).astype(np.float32)
        x[1, 123_456] = 1e30  # a maximum inside one part
        x64 = x.astype(np.float64)
        for axis in (None, -1):
            n = x.size if axis is None else x.shape[1]
            check_sum(rt.sum(x, axis=axis), x64, axis, n)
            np.testing.assert_allclose(np.asarray(rt.mean(x, axis)), x64.mean(axis=axis), rtol=2e-6 * np.sqrt(n))
            np.testing.assert_array_equal(np.asarray(rt.max(x, axis)), x.max(axis=axis))
            np.testing.assert_array_equal(np.asarray(rt.min(x, axis)), x.min(axis=axis))
        x[0, 299_000] = np.nan
        assert np.isnan(np.asarray(rt.max(x[:1], -1))).all() and np.isnan(np.asarray(rt.sum(x))).all()
        assert np.isnan(np.asarray(rt.min(x[:1], -1))).all()
    finally:
        rt.set_num_threads(before)


@given(st.lists(st.integers(1, 12), min_size=1, max_size=3), st.integers(-3, 2), st.integers(0, 2**31))
@settings(max_examples=30, deadline=None)
def test_reductions_hypothesis_strided(shape, axis, seed):
    axis = axis % len(shape)
    x = np.random.default_rng(seed).standard_normal([d * 2 for d in shape]).astype(np.float32)
    x = x[tuple(slice(None, None, -2) for _ in shape)]
    for tier in each_isa():
        t = rt.tensor(x)
        check_sum(rt.sum(t, axis), x.astype(np.float64), axis, x.shape[axis])
        np.testing.assert_array_equal(np.asarray(t.max(axis)), x.max(axis), err_msg=tier)
        np.testing.assert_array_equal(np.asarray(t.argmax(axis)), x.argmax(axis), err_msg=tier)


def test_reduction_dtypes_nan_and_empty(isa):
    i = np.arange(-10, 14, dtype=np.int32).reshape(4, 6)
    assert rt.sum(i).dtype == "i64" and int(np.asarray(rt.sum(i))) == i.sum()
    np.testing.assert_array_equal(np.asarray(rt.max(i, 0)), i.max(0))
    assert rt.max(i, 0).dtype == "i32"
    np.testing.assert_allclose(np.asarray(rt.mean(i, 1)), i.mean(1))
    np.testing.assert_array_equal(np.asarray(rt.argmax(i, 1)), i.argmax(1))
    d = np.random.default_rng(1).standard_normal((5, 9))
    np.testing.assert_allclose(np.asarray(rt.sum(d, 1)), d.sum(1), rtol=1e-14)
    x = np.array([[1, np.nan, 3], [1, 5, 2]], np.float32)
    assert np.isnan(np.asarray(rt.max(x, 1))[0]) and np.asarray(rt.max(x, 1))[1] == 5
    np.testing.assert_array_equal(np.asarray(rt.argmax(x, 1)), [1, 1])
    e = np.zeros((3, 0), np.float32)
    np.testing.assert_array_equal(np.asarray(rt.sum(e, 1)), np.zeros(3))
    assert np.all(np.isnan(np.asarray(rt.mean(e, 1))))
    assert rt.max(e, 0).shape == (0,)
    with pytest.raises(rt.ShapeError, match="max"):
        rt.max(e, 1)
    with pytest.raises(rt.ShapeError, match="argmax"):
        rt.argmax(e)
    with pytest.raises(rt.ShapeError, match="axis 2"):
        rt.sum(x, 2)
    s = rt.tensor(np.float32(3.0))
    assert float(np.asarray(rt.sum(s))) == 3.0 and rt.sum(s).shape == ()


def softmax64(x, axis):
    m = x.max(axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("n", ODD)
def test_softmax_rows(isa, n):
    x = np.random.default_rng(n).standard_normal((5, n)).astype(np.float32) * 8
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(np.asarray(rt.softmax(x)), softmax64(x64, -1), rtol=4e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(rt.log_softmax(x)), np.log(softmax64(x64, -1)), atol=4e-6, rtol=1e-6)


def test_softmax_axes_strides_and_dtypes(isa):
    x = np.random.default_rng(2).standard_normal((6, 7, 17)).astype(np.float32)
    for axis in (0, 1, -1):
        np.testing.assert_allclose(np.asarray(rt.softmax(x, axis)), softmax64(x.astype(np.float64), axis), rtol=4e-6, atol=1e-6)
    v = x[:, ::-1, ::2]
    np.testing.assert_allclose(np.asarray(rt.tensor(v).softmax(1)), softmax64(v.astype(np.float64), 1), rtol=4e-6, atol=1e-6)
    d = x.astype(np.float64)
    np.testing.assert_allclose(np.asarray(rt.softmax(d)), softmax64(d, -1), rtol=1e-14)
    h = rt.softmax(rt.tensor(x).astype("bf16"))
    assert h.dtype == "bf16"
    with pytest.raises(rt.DTypeError, match="softmax"):
        rt.softmax(np.ones(3, np.int32))
    assert rt.softmax(np.zeros((2, 0), np.float32)).shape == (2, 0)


def test_softmax_edge_cases(isa):
    x = np.array(
        [
            [1e30, -1e30, 0.0, 1e30],  # huge values: no overflow
            [-np.inf] * 4,  # fully masked row: zeros, no NaN
            [0.0, -np.inf, -np.inf, 1.0],  # -inf mask
            [3.0, 3.0, 3.0, 3.0],
        ],
        np.float32,
    )
    p = np.asarray(rt.softmax(x))
    assert not np.isnan(p).any()
    np.testing.assert_allclose(p[0], [0.5, 0, 0, 0.5])
    np.testing.assert_array_equal(p[1], np.zeros(4))
    np.testing.assert_allclose(p[2], [1 / (1 + np.e), 0, 0, np.e / (1 + np.e)], rtol=4e-6)
    np.testing.assert_allclose(p[3], [0.25] * 4, rtol=1e-6)
    lp = np.asarray(rt.log_softmax(x))
    assert not np.isnan(lp).any()
    np.testing.assert_array_equal(lp[1], [-np.inf] * 4)
    np.testing.assert_allclose(lp[0], [np.log(0.5), -2e30, -1e30, np.log(0.5)], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(rt.softmax(np.float32([[7.0]]))), [[1.0]])
