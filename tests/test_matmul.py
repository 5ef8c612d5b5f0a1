"""GEMM through rt.matmul / @ / rt.linear / rt.prepack against a float64 numpy reference,
on every ISA tier the CPU has."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rtserve as rt

ml_dtypes = pytest.importorskip("ml_dtypes")
EPS32 = float(np.finfo(np.float32).eps)
BF16_EPS = 2.0**-8  # bf16 rounding of the activations (bf16 kernel) and of the weights
SIZES = [1, 2, 7, 8, 9, 16, 17, 33, 127, 257]


def uses_bf16_kernel() -> bool:
    return rt.isa() == "avx512" and dict(rt.cpu_features())["avx512_bf16"]


def f32_tol(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|error| bound for an f32 product with f32 accumulation: c·eps·sqrt(K)·(|A||B|)."""
    k = a.shape[-1]
    return 1e-30 + 4 * EPS32 * np.sqrt(max(k, 1)) * (np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64))


def strided(arr: np.ndarray, how: str) -> np.ndarray:
    """The same values through a non-contiguous view."""
    if how == "transposed":
        return np.ascontiguousarray(arr.T).T
    if how == "reversed":
        return np.ascontiguousarray(arr[::-1])[::-1]
    if how == "sliced":
        big = np.zeros((arr.shape[0], arr.shape[1] * 2), arr.dtype)
        big[:, ::2] = arr
        return big[:, ::2]
    return arr


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(SIZES), st.sampled_from(SIZES), st.sampled_from(SIZES),
       st.sampled_from(["contiguous", "transposed", "reversed", "sliced"]),
       st.sampled_from(["contiguous", "transposed", "reversed", "sliced"]), st.integers(0, 2**32 - 1))
def test_matmul_f32_matches_float64(isa, m, k, n, how_a, how_b, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    got = rt.matmul(strided(a, how_a), strided(b, how_b)).numpy()
    ref = a.astype(np.float64) @ b.astype(np.float64)
    assert got.dtype == np.float32 and got.shape == (m, n)
    assert np.all(np.abs(got - ref) <= f32_tol(a, b))


def test_large_shapes_and_thread_counts(isa):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((100, 1100), dtype=np.float32)  # K crosses the depth block (1024)
    b = rng.standard_normal((1100, 4100), dtype=np.float32)  # N crosses the NC block boundary
    ref = a.astype(np.float64) @ b.astype(np.float64)
    before = rt.num_threads()
    try:
        for threads in (1, 2, 3):
            rt.set_num_threads(threads)
            got = (rt.tensor(a) @ rt.tensor(b)).numpy()
            assert np.all(np.abs(got - ref) <= f32_tol(a, b)), threads
    finally:
        rt.set_num_threads(before)


@pytest.mark.parametrize("wdtype", ["bf16", "f16"])
@pytest.mark.parametrize("m", [1, 5, 33])
def test_half_precision_weights(isa, wdtype, m):
    rng = np.random.default_rng(m)
    k, n = 129, 70
    a = rng.standard_normal((m, k), dtype=np.float32)
    w32 = rng.standard_normal((k, n), dtype=np.float32)
    np_dtype = ml_dtypes.bfloat16 if wdtype == "bf16" else np.float16
    w = w32.astype(np_dtype)
    got = rt.matmul(a, rt.tensor(w)).numpy()
    ref = a.astype(np.float64) @ w.astype(np.float64)
    bound = f32_tol(a, w.astype(np.float32))
    if wdtype == "bf16" and uses_bf16_kernel() and m > 8:
        # vdpbf16ps rounds the activations to bf16 as well.
        bound = bound + BF16_EPS * (np.abs(a).astype(np.float64) @ np.abs(w.astype(np.float64)))
    assert np.all(np.abs(got - ref) <= bound)


def test_batched_broadcasting_and_vectors():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((2, 1, 5, 7), dtype=np.float32)
    b = rng.standard_normal((3, 7, 4), dtype=np.float32)
    got = rt.matmul(a, b).numpy()
    ref = a.astype(np.float64) @ b.astype(np.float64)
    assert got.shape == (2, 3, 5, 4)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    v = rng.standard_normal(7, dtype=np.float32)
    m = rng.standard_normal((7, 3), dtype=np.float32)
    np.testing.assert_allclose(rt.matmul(v, m).numpy(), v @ m, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rt.matmul(m.T.copy(), v).numpy(), m.T @ v, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rt.matmul(v, v).numpy(), v @ v, rtol=1e-5)
    assert rt.matmul(v, v).shape == ()
    # numpy on the left of @ goes through Tensor.__rmatmul__
    np.testing.assert_allclose((m.T.copy() @ rt.tensor(m)).numpy(), m.T @ m, rtol=1e-5, atol=1e-5)


def test_empty_and_degenerate_shapes():
    z = rt.matmul(np.zeros((3, 0), np.float32), np.zeros((0, 4), np.float32)).numpy()
    assert z.shape == (3, 4) and not z.any()
    assert rt.matmul(np.zeros((0, 5), np.float32), np.ones((5, 2), np.float32)).shape == (0, 2)
    assert rt.matmul(np.ones((2, 5), np.float32), np.ones((5, 0), np.float32)).shape == (2, 0)
    out = rt.linear(np.ones((2, 0), np.float32), np.ones((3, 0), np.float32), bias=np.arange(3, dtype=np.float32))
    assert out.tolist() == [[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]]


def test_bad_inputs_raise_typed_errors():
    with pytest.raises(rt.ShapeError, match="matmul"):
        rt.matmul(np.ones((2, 3), np.float32), np.ones((4, 5), np.float32))
    with pytest.raises(rt.ShapeError, match="broadcast"):
        rt.matmul(np.ones((2, 2, 3), np.float32), np.ones((3, 3, 4), np.float32))
    with pytest.raises(rt.DTypeError, match="f32"):
        rt.matmul(np.ones((2, 3), np.int64), np.ones((3, 2), np.float32))
    with pytest.raises(rt.DTypeError, match="weights"):
        rt.matmul(np.ones((2, 3), np.float32), np.ones((3, 2), np.int32))
    with pytest.raises(rt.ShapeError):
        rt.matmul(np.float32(2), np.ones(3, np.float32))
    with pytest.raises(rt.ShapeError, match="linear"):
        rt.linear(np.ones((2, 3), np.float32), np.ones((4, 5), np.float32))
    with pytest.raises(rt.ShapeError, match="bias"):
        rt.linear(np.ones((2, 3), np.float32), np.ones((4, 3), np.float32), bias=np.ones(5, np.float32))
    with pytest.raises(rt.UnsupportedError, match="activation"):
        rt.linear(np.ones((2, 3), np.float32), np.ones((4, 3), np.float32), activation="swiglu")


def gelu64(x):
    from math import erf, sqrt
    return np.vectorize(lambda v: 0.5 * v * (1 + erf(v / sqrt(2))))(x)


ACTIVATIONS = {
    None: lambda x: x,
    "relu": lambda x: np.maximum(x, 0),
    "gelu": gelu64,
    "gelu_tanh": lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))),
    "silu": lambda x: x / (1 + np.exp(-x)),
}


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("m", [1, 3, 8, 9, 40])
def test_linear_fused_epilogue(isa, activation, m):
    rng = np.random.default_rng(m)
    k, n = 67, 45
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((n, k), dtype=np.float32)  # HF layout [out, in]
    bias = rng.standard_normal(n, dtype=np.float32)
    res = rng.standard_normal((m, n), dtype=np.float32)
    pre = x.astype(np.float64) @ w.T.astype(np.float64) + bias
    ref = ACTIVATIONS[activation](pre) + res
    tol = 1e-6 + 2 * f32_tol(x, w.T)
    for weight in (w, rt.prepack(w)):
        got = rt.linear(x, weight, bias=bias, activation=activation, residual=res).numpy()
        assert np.all(np.abs(got - ref) <= tol + 1e-6 * np.abs(ref)), (activation, type(weight))


def test_linear_on_3d_input_and_prepack_properties():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 16), dtype=np.float32)
    w = rng.standard_normal((5, 16), dtype=np.float32)
    p = rt.prepack(w)
    assert p.shape == (5, 16) and p.dtype == "f32" and p.nbytes >= 5 * 16 * 4
    got = rt.linear(x, p).numpy()
    assert got.shape == (2, 3, 5)
    np.testing.assert_allclose(got, x @ w.T, rtol=1e-5, atol=1e-5)
    wb = rt.tensor(w.astype(ml_dtypes.bfloat16))
    pb = rt.prepack(wb)
    assert pb.dtype == "bf16"
    got_b = rt.linear(x, pb).numpy()
    ref_b = x.astype(np.float64) @ w.astype(ml_dtypes.bfloat16).astype(np.float64).T
    np.testing.assert_allclose(got_b, ref_b, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("m", [1, 3, 40])
def test_prepacked_weights_deeper_than_one_block(isa, m):
    """K beyond the packing depth (1024 on AVX-512, 256 otherwise) spans several packed blocks."""
    rng = np.random.default_rng(m)
    k, n = 2100, 70
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((n, k), dtype=np.float32)
    ref = x.astype(np.float64) @ w.T.astype(np.float64)
    tol = f32_tol(x, w.T)
    for weight in (w, rt.prepack(w)):
        got = rt.linear(x, weight).numpy()
        assert np.all(np.abs(got - ref) <= tol)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("k,n", [(131, 45), (1000, 77), (768, 3072), (257, 1), (300, 100)])
def test_one_row_over_row_major_b_split_by_rows(isa, threads, k, n):
    """1 x K @ K x N with B row-major (numpy's x @ W): on AVX-512 the threads split B's rows
    (partial rows added), with a bias and an activation on top through linear(x, w.T)."""
    before = rt.num_threads()
    rt.set_num_threads(threads)
    try:
        rng = np.random.default_rng(k + n)
        x = rng.standard_normal((1, k), dtype=np.float32)
        w = rng.standard_normal((k, n), dtype=np.float32)
        bias = rng.standard_normal(n, dtype=np.float32)
        ref = x.astype(np.float64) @ w.astype(np.float64)
        tol = f32_tol(x, w)
        assert np.all(np.abs(rt.matmul(x, w).numpy() - ref) <= tol)
        got = rt.linear(x, w.T, bias=bias, activation="relu").numpy()  # B = (w.T).T = w
        assert np.all(np.abs(got - np.maximum(ref + bias, 0)) <= tol + 1e-6)
    finally:
        rt.set_num_threads(before)


@pytest.mark.parametrize("k", [67, 2101])
@pytest.mark.parametrize("m", [1, 2, 5, 8])
def test_prepacked_bf16_small_m_odd_depth(isa, m, k):
    """M <= 8 over bf16 weights, as stored and pre-packed: odd K (the last k-pair half empty), K beyond one
    packed block, a partial last panel (70 columns), and an epilogue on top."""
    rng = np.random.default_rng(m * k)
    n = 70
    x = rng.standard_normal((m, k), dtype=np.float32)
    wb = rng.standard_normal((n, k), dtype=np.float32).astype(ml_dtypes.bfloat16)
    bias = rng.standard_normal(n, dtype=np.float32)
    ref = x.astype(np.float64) @ wb.astype(np.float64).T + bias
    # Where the CPU has AVX512_BF16 and M > 8 the activations are rounded to bf16; here
    # (M <= 8) the weights are widened exactly, so f32 accumulation bounds the error.
    tol = 1e-6 + 2 * f32_tol(x, wb.astype(np.float32).T)
    for weight in (rt.tensor(wb), rt.prepack(rt.tensor(wb))):  # as stored (N x K), packed
        got = rt.linear(x, weight, bias=bias).numpy()
        assert np.all(np.abs(got - ref) <= tol), type(weight)


@pytest.mark.parametrize("k", [129, 2101])
@pytest.mark.parametrize("m", [9, 33, 200])
def test_prepacked_bf16_gemm_on_every_tier(isa, m, k):
    """M > 8 over pre-packed bf16 weights: they stay bf16 (k-pair panels) on every CPU; the
    AVX512-BF16 kernel reads them where it runs, every other tier widens them to its own
    f32 panels per product (K across packed depth blocks, 70 columns: a partial panel)."""
    rng = np.random.default_rng(m + k)
    n = 70
    x = rng.standard_normal((m, k), dtype=np.float32)
    wb = rng.standard_normal((n, k), dtype=np.float32).astype(ml_dtypes.bfloat16)
    bias = rng.standard_normal(n, dtype=np.float32)
    w64 = wb.astype(np.float64).T
    ref = np.maximum(x.astype(np.float64) @ w64 + bias, 0)
    tol = 1e-6 + 2 * f32_tol(x, wb.astype(np.float32).T)
    if uses_bf16_kernel():
        tol = tol + BF16_EPS * (np.abs(x).astype(np.float64) @ np.abs(w64))  # activations rounded
    packed = rt.prepack(rt.tensor(wb))
    # Two bytes a weight (panels padded to 32 columns, K to even) at every tier, not f32's four.
    assert packed.nbytes == 2 * 96 * (k + k % 2), packed.nbytes
    got = rt.linear(x, packed, bias=bias, activation="relu").numpy()
    assert np.all(np.abs(got - ref) <= tol)


@pytest.mark.parametrize("threads", [2, 3, 4])
@pytest.mark.parametrize("m", [24, 300])
def test_prepacked_bf16_split_across_threads_equals_one_thread(isa, threads, m):
    """Pre-packed bf16 weights with many rows: the threads split the rows (each converts
    only its rows of A to bf16 pairs), with few rows the columns; either way every
    element is the same sum in the same order as on one thread, so results are identical."""
    rng = np.random.default_rng(m)
    x = rng.standard_normal((m, 257), dtype=np.float32)
    packed = rt.prepack(rt.tensor(rng.standard_normal((100, 257), dtype=np.float32).astype(ml_dtypes.bfloat16)))
    before = rt.num_threads()
    try:
        rt.set_num_threads(1)
        alone = rt.linear(x, packed).numpy()
        rt.set_num_threads(threads)
        split = rt.linear(x, packed).numpy()
    finally:
        rt.set_num_threads(before)
    assert np.array_equal(alone, split)


@pytest.mark.parametrize("n", [192, 576, 607])
@pytest.mark.parametrize("m", [1, 5])
def test_prepacked_small_m_split_across_threads(isa, m, n):
    """M <= 8 over pre-packed panels, wide enough to split across the pool's threads
    (odd panel counts: each thread takes an equal share of panels)."""
    rng = np.random.default_rng(n + m)
    k = 576
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((n, k), dtype=np.float32)
    ref = x.astype(np.float64) @ w.T.astype(np.float64)
    got = rt.linear(x, rt.prepack(w)).numpy()
    assert np.all(np.abs(got - ref) <= f32_tol(x, w.T))
    wb = w.astype(ml_dtypes.bfloat16)
    ref_b = x.astype(np.float64) @ wb.astype(np.float64).T
    got_b = rt.linear(x, rt.prepack(rt.tensor(wb))).numpy()
    np.testing.assert_allclose(got_b, ref_b, rtol=1e-3, atol=1e-3 * np.sqrt(k))


@pytest.mark.parametrize("m", [1, 3])
def test_prepacked_weights_larger_than_the_cache(m):
    """Pre-packed weights past the last-level cache (here 40 MiB f32 alive at once) are
    streamed with a non-temporal prefetch hint by the small-M kernels; hints never change
    results, at any M the small-M path takes, f32 and bf16."""
    rng = np.random.default_rng(m)
    k, n = 1024, 10240
    w = rng.standard_normal((n, k), dtype=np.float32)
    packed = rt.prepack(w)
    assert packed.nbytes >= 40 << 20
    x = rng.standard_normal((m, k), dtype=np.float32)
    ref = x.astype(np.float64) @ w.T.astype(np.float64)
    assert np.all(np.abs(rt.linear(x, packed).numpy() - ref) <= f32_tol(x, w.T))
    wb = w[:4096].astype(ml_dtypes.bfloat16)
    ref_b = x.astype(np.float64) @ wb.astype(np.float64).T
    got_b = rt.linear(x, rt.prepack(rt.tensor(wb))).numpy()
    np.testing.assert_allclose(got_b, ref_b, rtol=1e-3, atol=1e-3 * np.sqrt(k))
