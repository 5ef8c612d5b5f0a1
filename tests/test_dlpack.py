"""DLPack both ways: numpy (and torch when installed) <-> rt.Tensor without copies."""

from __future__ import annotations

import gc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import rtserve as rt

# numpy's DLPack does not carry bfloat16; rt<->rt and torch cover it.
NUMPY_DLPACK = ["f32", "f64", "f16", "i64", "i32", "i16", "i8", "u8", "bool"]
NP = {"f32": np.float32, "f64": np.float64, "f16": np.float16, "i64": np.int64, "i32": np.int32,
      "i16": np.int16, "i8": np.int8, "u8": np.uint8, "bool": np.bool_}


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(NUMPY_DLPACK), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=9),
       st.booleans())
def test_numpy_to_rt_and_back_shares_memory(name, shape, transposed):
    base = np.zeros(shape, dtype=NP[name])
    base.reshape(-1)[:] = np.arange(base.size) % 7
    src = base.T if transposed else base
    t = rt.from_dlpack(src)
    assert t.dtype == name and t.shape == src.shape
    assert np.array_equal(t.numpy(), src)
    back = np.from_dlpack(t)
    assert np.array_equal(back, src)
    if src.size:
        assert np.shares_memory(t.numpy(), base)
        assert np.shares_memory(back, base)


def test_writes_through_dlpack_views_are_shared():
    a = np.zeros(6, np.float32)
    t = rt.from_dlpack(a)
    a[2] = 5.0
    assert t.numpy()[2] == 5.0
    b = np.from_dlpack(t)
    b[4] = 3.0
    assert a[4] == 3.0


def test_negative_strides_export():
    a = np.arange(10, dtype=np.int32)
    t = rt.tensor(a)[::-2]
    out = np.from_dlpack(t)
    assert out.tolist() == [9, 7, 5, 3, 1]
    assert np.shares_memory(out, a)


def test_import_keeps_producer_alive_and_releases_it():
    a = np.arange(1000, dtype=np.float64)
    t = rt.from_dlpack(a)
    del a
    gc.collect()
    assert t.numpy()[999] == 999.0
    del t
    gc.collect()  # the producer's deleter ran (no crash, no leak visible here)


def test_bf16_round_trip_between_rtserve_tensors():
    bits = np.array([0x3F80, 0xBF80, 0x4049], np.uint16)
    t = rt.tensor(bits, dtype="bf16")
    for capsule in (t.__dlpack__(), t.__dlpack__(max_version=(1, 0))):
        u = rt.from_dlpack(capsule)
        assert u.dtype == "bf16"
        assert u.astype("f32").tolist() == t.astype("f32").tolist()
    assert np.shares_memory(rt.from_dlpack(t.__dlpack__(max_version=(1, 0))).numpy().view(np.uint16), bits)


def test_consumed_capsule_cannot_be_imported_twice():
    t = rt.tensor(np.ones(3, np.float32))
    capsule = t.__dlpack__(max_version=(1, 0))
    rt.from_dlpack(capsule)
    with pytest.raises(ValueError, match="unconsumed"):
        rt.from_dlpack(capsule)


def test_unconsumed_capsules_are_freed():
    t = rt.tensor(np.ones(3, np.float32))
    for _ in range(100):
        t.__dlpack__()
        t.__dlpack__(max_version=(1, 0))
    gc.collect()


def test_read_only_memory_stays_read_only(tmp_path):
    path = tmp_path / "w.safetensors"
    rt.save_safetensors({"w": np.arange(4, dtype=np.float32)}, path)
    before = path.read_bytes()
    t = rt.load_safetensors(path)["w"]
    assert not t.writable and t.storage_kind == "mmap"
    # Versioned DLPack carries the read-only flag: numpy's array is not writable.
    out = np.from_dlpack(t)
    assert not out.flags.writeable
    with pytest.raises(ValueError):
        out[0] = 1.0
    # A legacy capsule cannot say "read-only", so it gets a copy.
    legacy = rt.from_dlpack(t.__dlpack__())
    assert legacy.writable and legacy.tolist() == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(BufferError):
        t.__dlpack__(copy=False)
    copied = np.from_dlpack(t, copy=True)
    copied[0] = 9.0
    assert path.read_bytes() == before


def test_dlpack_arguments_and_bad_inputs():
    t = rt.tensor(np.ones(2, np.float32))
    assert t.__dlpack_device__() == (1, 0)
    with pytest.raises(BufferError):
        t.__dlpack__(dl_device=(2, 0))
    with pytest.raises(ValueError):
        t.__dlpack__(stream=7)
    with pytest.raises(TypeError):
        rt.from_dlpack(object())
    with pytest.raises(TypeError):
        rt.from_dlpack([1, 2, 3])
    assert rt.from_dlpack(t).tolist() == [1.0, 1.0]




@pytest.fixture
def torch_mod():
    return pytest.importorskip("torch", reason="torch not installed (kept out of CI)")


def test_torch_round_trip(torch_mod):
    x = torch_mod.arange(12, dtype=torch_mod.float32).reshape(3, 4).t()
    t = rt.from_dlpack(x)
    assert t.shape == (4, 3)
    assert np.array_equal(t.numpy(), x.numpy())
    y = torch_mod.from_dlpack(t)
    y[0, 0] = 42.0
    assert x[0, 0].item() == 42.0
    b = torch_mod.tensor([1.0, -2.0], dtype=torch_mod.bfloat16)
    tb = rt.from_dlpack(b)
    assert tb.dtype == "bf16" and tb.astype("f32").tolist() == [1.0, -2.0]
    assert torch_mod.equal(torch_mod.from_dlpack(tb), b)
