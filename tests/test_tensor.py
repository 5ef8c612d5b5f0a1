"""rt.Tensor <-> numpy: exact round trips, zero-copy where documented, numpy view semantics."""

from __future__ import annotations

import gc
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import rtserve as rt

ml_dtypes = pytest.importorskip("ml_dtypes")

NUMPY_DTYPES = {
    "f32": np.dtype(np.float32),
    "f64": np.dtype(np.float64),
    "f16": np.dtype(np.float16),
    "bf16": np.dtype(ml_dtypes.bfloat16),
    "i64": np.dtype(np.int64),
    "i32": np.dtype(np.int32),
    "i16": np.dtype(np.int16),
    "i8": np.dtype(np.int8),
    "u8": np.dtype(np.uint8),
    "bool": np.dtype(np.bool_),
}
ODD_SIZES = [0, 1, 7, 33, 257]


def same_bits(x: np.ndarray, y: np.ndarray) -> bool:
    """Exact equality, NaN payloads included."""
    if x.shape != y.shape or x.dtype != y.dtype:
        return False
    u = np.dtype(f"u{x.dtype.itemsize}")
    return np.array_equal(np.ascontiguousarray(x).view(u), np.ascontiguousarray(y).view(u))


@st.composite
def arrays_any_dtype(draw, max_dims: int = 3):
    name = draw(st.sampled_from(sorted(NUMPY_DTYPES)))
    ndim = draw(st.integers(0, max_dims))
    # Mostly small dims, with the odd sizes of the issue mixed in; keep total size bounded.
    dims = draw(st.lists(st.sampled_from([1, 2, 3, 7] + ODD_SIZES), min_size=ndim, max_size=ndim))
    while np.prod(dims, dtype=np.int64) > 40_000:
        dims[dims.index(max(dims))] = 7
    dtype = NUMPY_DTYPES[name]
    if name == "bf16":
        bits = draw(hnp.arrays(np.uint16, tuple(dims)))
        arr = bits.view(dtype)
    else:
        arr = draw(hnp.arrays(dtype, tuple(dims)))
    return name, arr


@st.composite
def strided_views(draw):
    """A numpy view with steps (negative too) and a permutation: non-contiguous input."""
    name, base = draw(arrays_any_dtype())
    index = []
    for d in base.shape:
        step = draw(st.sampled_from([1, 2, 3, -1, -2]))
        start = draw(st.integers(0, max(d - 1, 0))) if d else 0
        index.append(slice(start, None, step) if step > 0 else slice(None, None, step))
    view = base[tuple(index) + (Ellipsis,)]  # Ellipsis keeps 0-d results views, not scalars
    perm = draw(st.permutations(range(view.ndim)))
    return name, base, view.transpose(perm)


@settings(max_examples=150, deadline=None)
@given(arrays_any_dtype())
def test_round_trip_every_dtype_is_exact_and_zero_copy(case):
    name, arr = case
    t = rt.tensor(arr)
    assert t.dtype == name
    assert t.shape == arr.shape
    assert t.nbytes == arr.nbytes
    out = t.numpy()
    assert same_bits(out, arr)
    assert same_bits(np.asarray(t), arr)
    if arr.size:
        assert np.shares_memory(out, arr)
        assert np.shares_memory(np.asarray(t), arr)


@settings(max_examples=150, deadline=None)
@given(strided_views())
def test_non_contiguous_and_negative_strides_round_trip_zero_copy(case):
    name, base, view = case
    t = rt.tensor(view)
    assert t.dtype == name
    assert t.shape == view.shape
    if view.size:  # strides in elements; size-1 dims may carry any stride
        for got, s, n in zip(t.strides, view.strides, view.shape):
            assert n == 1 or got == s // view.itemsize
    out = t.numpy()
    assert same_bits(out, view)
    if view.size:
        assert np.shares_memory(out, base)
    assert same_bits(t.contiguous().numpy(), view.copy(order="C"))


def test_writes_are_visible_both_ways():
    a = np.zeros((4, 5), np.float32)
    t = rt.tensor(a[:, ::2])
    a[1, 2] = 7.0
    assert t.numpy()[1, 1] == 7.0
    t.numpy()[3, 2] = -1.0  # owned-by-numpy memory is writable through the view
    assert a[3, 4] == -1.0


def test_storage_outlives_its_sources():
    a = np.arange(10, dtype=np.int64)
    t = rt.tensor(a)[2:8:2]
    del a
    gc.collect()
    view = t.numpy()
    del t
    gc.collect()
    assert view.tolist() == [2, 4, 6]


def test_lists_scalars_and_dtype_argument_copy_with_numpy_defaults():
    assert rt.tensor([[1, 2], [3, 4]]).dtype == "i64"
    assert rt.tensor([1.5, 2.5]).dtype == "f64"
    t = rt.tensor([1.5, -2.25], dtype="f32")
    assert t.dtype == "f32" and t.tolist() == [1.5, -2.25]
    assert rt.tensor(3.0).shape == ()
    assert rt.tensor(np.float32(2)).numpy() == 2
    assert rt.tensor(np.zeros(3), dtype=np.float16).dtype == "f16"
    assert rt.tensor(np.zeros(3), dtype="bfloat16").dtype == "bf16"


def test_non_native_byte_order_and_misaligned_inputs_are_copied_exactly():
    big = np.arange(7, dtype=">f4")
    t = rt.tensor(big)
    assert t.dtype == "f32" and t.numpy().tolist() == big.tolist()
    raw = np.zeros(4 * 9 + 1, np.uint8)
    misaligned = raw[1:].view(np.float32)
    misaligned[:] = np.arange(9)
    t = rt.tensor(misaligned)
    assert t.numpy().tolist() == list(range(9))
    assert not np.shares_memory(t.numpy(), raw)
    odd_stride = np.zeros(13, np.uint8)[1:].view(np.int16)[::2]  # misaligned, strided int16
    assert rt.tensor(odd_stride).numpy().tolist() == odd_stride.tolist()


def test_unsupported_numpy_dtypes_raise_dtype_error():
    for dtype in (np.uint16, np.uint32, np.complex64, np.dtype("U3"), object):
        with pytest.raises(rt.DTypeError):
            rt.tensor(np.zeros(2, dtype=dtype))
    with pytest.raises(rt.DTypeError, match="unknown dtype"):
        rt.tensor(np.zeros(2), dtype="f128")


def test_bf16_uses_ml_dtypes_and_raw_bits_round_trip():
    bits = np.array([0x3F80, 0xC000, 0x7FC0, 0x0001], np.uint16)
    t = rt.tensor(bits, dtype="bf16")
    assert t.dtype == "bf16"
    assert t.numpy().dtype == ml_dtypes.bfloat16
    assert t.numpy().view(np.uint16).tolist() == bits.tolist()
    assert np.shares_memory(t.numpy(), bits)
    assert t.astype("f32").tolist()[:2] == [1.0, -2.0]


def test_bf16_without_ml_dtypes_is_a_uint16_view():
    code = (
        "import sys; sys.modules['ml_dtypes'] = None\n"
        "import numpy as np, rtserve as rt\n"
        "bits = np.array([0x3F80, 0x4000], np.uint16)\n"
        "t = rt.tensor(bits, dtype='bf16')\n"
        "out = t.numpy()\n"
        "assert t.dtype == 'bf16' and out.dtype == np.uint16, out.dtype\n"
        "assert out.tolist() == [0x3F80, 0x4000] and np.shares_memory(out, bits)\n"
        "assert t.astype('f32').tolist() == [1.0, 2.0]\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


# --- views -------------------------------------------------------------------


@st.composite
def index_for(draw, shape):
    items = []
    dims = list(shape)
    while dims and draw(st.booleans()):
        d = dims.pop(0)
        kind = draw(st.sampled_from(["int", "slice", "none"]))
        if kind == "int" and d:
            items.append(draw(st.integers(-d, d - 1)))
        elif kind == "none":
            items.append(None)
            dims.insert(0, d)
        else:
            bound = st.one_of(st.none(), st.integers(-2 * d - 2, 2 * d + 2))
            step = draw(st.sampled_from([None, 1, 2, 3, -1, -3, 10**20]))
            items.append(slice(draw(bound), draw(bound), step))
    if draw(st.booleans()):
        items.insert(draw(st.integers(0, len(items))), Ellipsis)
    return tuple(items)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_indexing_matches_numpy(data):
    shape = tuple(data.draw(st.lists(st.sampled_from([1, 2, 5, 7]), min_size=1, max_size=3)))
    a = np.arange(int(np.prod(shape)), dtype=np.int32).reshape(shape)
    idx = data.draw(index_for(shape))
    try:
        expected = a[idx]
    except IndexError:
        with pytest.raises(IndexError):
            rt.tensor(a)[idx]
        return
    got = rt.tensor(a)[idx]
    assert got.shape == expected.shape
    assert np.array_equal(got.numpy(), expected)
    if expected.size:
        assert np.shares_memory(got.numpy(), a)


def test_index_errors_are_python_index_errors():
    t = rt.tensor(np.zeros((3, 4)))
    with pytest.raises(IndexError):
        t[3]
    with pytest.raises(IndexError):
        t[0, 0, 0]
    with pytest.raises(IndexError):
        t[..., ...]
    with pytest.raises(rt.UnsupportedError):
        t[[0, 1]]
    with pytest.raises(rt.UnsupportedError):
        t[True]
    assert [row.tolist() for row in rt.tensor(np.eye(2))] == [[1.0, 0.0], [0.0, 1.0]]


@settings(max_examples=150, deadline=None)
@given(strided_views(), st.data())
def test_reshape_is_a_view_exactly_when_numpy_can_make_one(case, data):
    _, base, view = case
    n = view.size
    divisors = [d for d in range(1, n + 1) if n % d == 0] or [1]
    first = data.draw(st.sampled_from(divisors))
    target = (first, -1) if n else (0, -1) if view.ndim and 0 in view.shape and first else (-1,)
    try:
        expected = view.reshape(target)
    except ValueError:
        return
    got = rt.tensor(view).reshape(target)
    assert got.shape == expected.shape
    assert same_bits(got.numpy(), expected)
    if n:
        numpy_view = np.shares_memory(expected, base)
        assert np.shares_memory(got.numpy(), base) == numpy_view


def test_reshape_forms_and_errors():
    t = rt.tensor(np.arange(24, dtype=np.float32))
    assert t.reshape(2, 3, 4).shape == (2, 3, 4)
    assert t.reshape((4, -1)).shape == (4, 6)
    assert t.reshape([-1]).shape == (24,)
    with pytest.raises(rt.ShapeError, match="reshape"):
        t.reshape(5, 5)
    with pytest.raises(ValueError):  # ShapeError is a ValueError
        t.reshape(-1, -1)


def test_transpose_permute_expand_match_numpy():
    a = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    t = rt.tensor(a)
    assert np.array_equal(t.T.numpy(), a.T)
    assert np.array_equal(t.transpose().numpy(), a.transpose())
    assert np.array_equal(t.permute(2, 0, 1).numpy(), a.transpose(2, 0, 1))
    assert np.array_equal(t.transpose((1, 0, 2)).numpy(), a.transpose(1, 0, 2))
    assert np.shares_memory(t.T.numpy(), a)
    b = rt.tensor(np.arange(3, dtype=np.int8).reshape(3, 1)).expand(2, 3, 5)
    assert b.strides == (0, 1, 0)
    assert np.array_equal(b.numpy(), np.broadcast_to(np.arange(3, dtype=np.int8).reshape(3, 1), (2, 3, 5)))
    with pytest.raises(rt.ShapeError):
        t.permute(0, 0, 1)
    with pytest.raises(rt.ShapeError, match="broadcast"):
        t.expand(2, 5, 4)
    assert not t.T.is_contiguous() and t.T.contiguous().is_contiguous()
    assert np.array_equal(t.T.contiguous().numpy(), np.ascontiguousarray(a.T))


# --- astype ------------------------------------------------------------------

IN_RANGE = {
    "f32": (-100.0, 100.0), "f64": (-100.0, 100.0), "f16": (-100.0, 100.0), "bf16": (-100.0, 100.0),
    "i64": (-100, 100), "i32": (-100, 100), "i16": (-100, 100), "i8": (-100, 100), "u8": (0, 100),
    "bool": (0, 1),
}


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(NUMPY_DTYPES)), st.sampled_from(sorted(NUMPY_DTYPES)), st.data())
def test_astype_matches_numpy_for_in_range_values(src, dst, data):
    lo, hi = IN_RANGE[src]
    n = data.draw(st.sampled_from(ODD_SIZES))
    if src == "bool":
        values = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    elif src in ("f32", "f64", "f16", "bf16"):
        raw = data.draw(st.lists(st.floats(lo, hi, width=32), min_size=n, max_size=n))
        values = np.array(raw, np.float64).astype(NUMPY_DTYPES[src])
    else:
        raw = data.draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n))
        values = np.array(raw, dtype=NUMPY_DTYPES[src])
    if src == "f64" and dst == "bf16":
        # numpy/ml_dtypes may round f64 -> bf16 through f32 (twice); compare through f32 data.
        values = values.astype(np.float32).astype(np.float64)
    expected = values.astype(NUMPY_DTYPES[dst])
    got = rt.tensor(values).astype(dst)
    assert got.dtype == dst
    assert same_bits(got.numpy(), expected), (src, dst, values[:5], got.numpy()[:5], expected[:5])
    assert not (values.size and np.shares_memory(got.numpy(), values))


def test_repr_shows_dtype_shape_and_a_few_values():
    r = repr(rt.tensor(np.arange(10, dtype=np.float32)))
    assert r.startswith("Tensor(dtype=f32, shape=(10,), values=[0.0, 1.0")
    assert r.endswith("...])")
    assert "True" in repr(rt.tensor(np.array([True, False])))
    assert "shape=()" in repr(rt.tensor(np.int64(5)))


def test_panics_become_rtserve_error_not_a_crash():
    for detach in (False, True):
        with pytest.raises(rt.RtserveError, match="internal error, please report"):
            rt._core._debug_panic(detach)
    assert rt.tensor([1]).tolist() == [1]  # interpreter and module still fine


def test_error_classes_subclass_the_builtins():
    assert issubclass(rt.ShapeError, (rt.RtserveError)) and issubclass(rt.ShapeError, ValueError)
    assert issubclass(rt.DTypeError, TypeError)
    assert issubclass(rt.WeightsError, ValueError)
    assert issubclass(rt.DeviceError, RuntimeError)
    assert issubclass(rt.OutOfMemoryError, MemoryError)
    assert issubclass(rt.UnsupportedError, NotImplementedError)
    assert rt.ShapeError.__module__ == "rtserve"


def test_release_memory_frees_the_buffers_kept_for_reuse():
    rt.release_memory()
    x = rt.tensor(np.ones(1 << 20, dtype=np.float32))  # 4 MiB
    y = x + x  # a fresh 4 MiB output buffer
    del y  # kept for reuse by an output of the same size
    assert rt.release_memory() >= 4 << 20
    assert rt.release_memory() == 0
    np.testing.assert_array_equal((x + x).numpy()[:3], [2, 2, 2])  # allocation works after it
