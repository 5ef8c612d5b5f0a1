"""layer_norm, rms_norm and rope against numpy float64 on every ISA tier.

Tolerances (f32): norms atol 2e-5 + rtol 1e-5 (also for rows of ~1e4 + noise, where a one-pass
f32 variance would be wrong in the 3rd digit); rope atol 2e-6 at positions up to 1e5
(angles in f64; an f32 angle would be off by ~1e-2 there).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rtserve as rt

ODD = [1, 7, 17, 33, 127, 257]


def layer_norm64(x, w=None, b=None, eps=1e-5):
    x = x.astype(np.float64)
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    y = (x - m) / np.sqrt(v + eps)
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y


def rms_norm64(x, w=None, eps=1e-6):
    x = x.astype(np.float64)
    y = x / np.sqrt((x**2).mean(-1, keepdims=True) + eps)
    return y if w is None else y * w


@pytest.mark.parametrize("n", ODD)
def test_layer_norm(isa, n):
    r = np.random.default_rng(n)
    x = r.standard_normal((9, n)).astype(np.float32) * 3
    w = r.standard_normal(n).astype(np.float32)
    b = r.standard_normal(n).astype(np.float32)
    np.testing.assert_allclose(np.asarray(rt.layer_norm(x, w, b)), layer_norm64(x, w, b), atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(rt.layer_norm(x)), layer_norm64(x), atol=2e-5, rtol=1e-5)
    big = (1e4 + r.standard_normal((4, n))).astype(np.float32)
    np.testing.assert_allclose(np.asarray(rt.layer_norm(big, w, b)), layer_norm64(big, w, b), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("n", ODD)
def test_rms_norm(isa, n):
    r = np.random.default_rng(n + 1)
    x = r.standard_normal((5, 3, n)).astype(np.float32) * 4
    w = r.standard_normal(n).astype(np.float32)
    np.testing.assert_allclose(np.asarray(rt.rms_norm(x, w)), rms_norm64(x, w), atol=1e-6, rtol=3e-6)
    np.testing.assert_allclose(np.asarray(rt.rms_norm(x, eps=1e-2)), rms_norm64(x, eps=1e-2), atol=1e-6, rtol=3e-6)


def test_norm_strides_dtypes_and_errors(isa):
    r = np.random.default_rng(0)
    x = r.standard_normal((8, 40)).astype(np.float32)
    v = x[::-2, 1::3]
    np.testing.assert_allclose(np.asarray(rt.layer_norm(rt.tensor(v))), layer_norm64(v), atol=2e-5, rtol=1e-5)
    h = rt.rms_norm(rt.tensor(x).astype("bf16"), np.ones(40, np.float32))
    assert h.dtype == "bf16"
    np.testing.assert_allclose(np.asarray(h.astype("f32")), rms_norm64(x), rtol=1e-2, atol=1e-2)
    assert rt.layer_norm(np.zeros((0, 5), np.float32)).shape == (0, 5)
    one = np.asarray(rt.layer_norm(np.float32([[5.0]])))
    assert one[0, 0] == 0.0
    with pytest.raises(rt.ShapeError, match=r"layer_norm.*weight.*\[3\]"):
        rt.layer_norm(x, np.ones(3, np.float32))
    with pytest.raises(rt.DTypeError, match="rms_norm"):
        rt.rms_norm(np.ones((2, 2), np.int32))


def rope64(x, pos, inv_freq, interleaved, rotary_dim):
    """x [b, s, h, d] float64; pos [b, s]."""
    x = x.astype(np.float64)
    out = x.copy()
    ang = pos[:, :, None].astype(np.float64) * inv_freq[None, None, :]  # [b, s, half]
    cos, sin = np.cos(ang)[:, :, None, :], np.sin(ang)[:, :, None, :]
    half = rotary_dim // 2
    if interleaved:
        a, b = x[..., 0:rotary_dim:2], x[..., 1:rotary_dim:2]
        out[..., 0:rotary_dim:2] = a * cos - b * sin
        out[..., 1:rotary_dim:2] = b * cos + a * sin
    else:
        a, b = x[..., :half], x[..., half:rotary_dim]
        out[..., :half] = a * cos - b * sin
        out[..., half:rotary_dim] = b * cos + a * sin
    return out


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("head_dim,rotary_dim", [(64, None), (34, 34), (32, 16), (2, 2)])
def test_rope_forms(isa, interleaved, head_dim, rotary_dim):
    r = np.random.default_rng(head_dim)
    x = r.standard_normal((2, 7, 3, head_dim)).astype(np.float32)
    rd = rotary_dim or head_dim
    inv = 1.0 / 10000.0 ** (np.arange(0, rd, 2, dtype=np.float64) / rd)
    pos = np.arange(7)[None, :].repeat(2, 0) + 5
    got = rt.rope(x, offset=5, interleaved=interleaved, rotary_dim=rotary_dim)
    np.testing.assert_allclose(np.asarray(got), rope64(x, pos, inv, interleaved, rd), atol=2e-6, rtol=1e-6)


def test_rope_hf_llama_rotate_half_equivalence(isa):
    # Hugging Face: q * cos + rotate_half(q) * sin, cos/sin = cat(freqs, freqs).
    r = np.random.default_rng(3)
    q = r.standard_normal((1, 5, 2, 8)).astype(np.float64)
    inv = 1.0 / 500000.0 ** (np.arange(0, 8, 2) / 8)
    freqs = np.arange(5)[:, None] * inv[None, :]
    emb = np.concatenate([freqs, freqs], -1)[None, :, None, :]
    rot = np.concatenate([-q[..., 4:], q[..., :4]], -1)
    want = q * np.cos(emb) + rot * np.sin(emb)
    got = rt.rope(q.astype(np.float32), theta=500000.0)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-6)


def test_rope_positions_inv_freq_large_positions_and_strides(isa):
    r = np.random.default_rng(4)
    base = r.standard_normal((3, 4, 2, 16)).astype(np.float32)
    x = base.transpose(1, 0, 2, 3)  # [4, 3, 2, 16], non-contiguous
    pos = np.array([[0, 99_999, 50_000], [7, 100_000, 3], [1, 2, 3], [65_536, 12_345, 99_998]], np.int64)
    inv = (1.0 / 10000.0 ** (np.arange(0, 16, 2) / 16) * 0.25).astype(np.float32)
    got = rt.rope(rt.tensor(x), positions=pos, inv_freq=inv)
    want = rope64(x, pos, inv.astype(np.float64), False, 16)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-6, rtol=1e-6)
    got = rt.rope(x, positions=pos.astype(np.int32), interleaved=True)
    inv64 = 1.0 / 10000.0 ** (np.arange(0, 16, 2) / 16)
    np.testing.assert_allclose(np.asarray(got), rope64(x, pos, inv64, True, 16), atol=2e-6, rtol=1e-6)
    with pytest.raises(rt.ShapeError, match="rope"):
        rt.rope(x, positions=np.zeros((2, 2), np.int64))
    with pytest.raises(rt.ShapeError, match="rotary_dim"):
        rt.rope(x, rotary_dim=5)
    with pytest.raises(rt.ShapeError, match="inv_freq"):
        rt.rope(x, inv_freq=np.ones(3, np.float32))
    with pytest.raises(rt.ShapeError, match="batch, seq, heads"):
        rt.rope(np.ones((2, 3, 4), np.float32))


@given(st.integers(1, 3), st.integers(1, 9), st.integers(1, 3), st.integers(1, 20), st.booleans(), st.integers(0, 2**20))
@settings(max_examples=25, deadline=None)
def test_rope_hypothesis(b, s, h, half, interleaved, offset):
    d = 2 * half
    x = np.random.default_rng(offset).standard_normal((b, s, h, d)).astype(np.float32)
    inv = 1.0 / 10000.0 ** (np.arange(0, d, 2) / d)
    pos = (np.arange(s) + offset)[None, :].repeat(b, 0)
    want = rope64(x, pos, inv, interleaved, d)
    np.testing.assert_allclose(np.asarray(rt.rope(x, offset=offset, interleaved=interleaved)), want, atol=2e-6, rtol=1e-6)
