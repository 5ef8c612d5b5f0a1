"""Fused attention against a numpy float64 reference, on every ISA tier.

Tolerance: |got - want| <= 2e-5 + 1e-4 * |want| (f32 accumulation over head_dim and seq_k
with inputs of order 1)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rtserve as rt
from rtserve import _core

attention = getattr(rt, "attention", _core.attention)

ATOL, RTOL = 2e-5, 1e-4


def reference(q, k, v, *, causal=False, scale=None, mask=None):
    """softmax(q kᵀ · scale + mask) v in float64; rows that attend nothing are 0."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    b, sq, hq, d = q.shape
    sk, hkv = k.shape[1], k.shape[2]
    group = hq // hkv
    k = np.repeat(k, group, axis=2)
    v = np.repeat(v, group, axis=2)
    scale = 1.0 / np.sqrt(d) if scale is None else scale
    s = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    allowed = np.ones((b, 1, sq, sk), dtype=bool)
    if causal:
        allowed &= np.arange(sk)[None, :] <= np.arange(sq)[:, None] + (sk - sq)
    if mask is not None:
        allowed &= (np.asarray(mask) != 0)[:, None, None, :]
    s = np.where(allowed, s, -np.inf)
    m = s.max(axis=-1, keepdims=True) if sk else np.zeros((b, hq, sq, 1))
    m = np.where(np.isfinite(m), m, 0.0)
    p = np.where(allowed, np.exp(s - m), 0.0)
    total = p.sum(axis=-1, keepdims=True)
    p = p / np.where(total > 0, total, 1.0)
    return np.einsum("bhqk,bkhd->bqhd", p, v)


def check(got, want):
    got = np.asarray(got)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=RTOL)


SEQS = st.sampled_from([1, 2, 7, 16, 33, 64, 65, 127, 128]) | st.integers(1, 130)


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 3),
    seq_q=SEQS,
    seq_k=SEQS,
    head_dim=st.sampled_from([1, 7, 16, 33, 64, 80]),
    head_dim_v=st.sampled_from([None, 5, 24]),
    heads_kv=st.integers(1, 2),
    ratio=st.sampled_from([1, 2, 4]),
    causal=st.booleans(),
    masked=st.booleans(),
    layout=st.sampled_from(["contiguous", "bhsd", "tensor_view"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_matches_reference(
    isa, batch, seq_q, seq_k, head_dim, head_dim_v, heads_kv, ratio, causal, masked, layout, seed
):
    rng = np.random.default_rng(seed)
    heads_q = heads_kv * ratio
    dv = head_dim if head_dim_v is None else head_dim_v
    if layout == "bhsd":
        # q from a [b, h, s, d] array: a strided view, read in place.
        q = rng.standard_normal((batch, heads_q, seq_q, head_dim), dtype=np.float32).transpose(0, 2, 1, 3)
    else:
        q = rng.standard_normal((batch, seq_q, heads_q, head_dim), dtype=np.float32)
    k = rng.standard_normal((batch, seq_k, heads_kv, head_dim), dtype=np.float32)
    v = rng.standard_normal((batch, seq_k, heads_kv, dv), dtype=np.float32)
    mask = None
    if masked:
        mask = rng.random((batch, seq_k)) < 0.7
        mask[0, :] = False  # batch 0 attends nothing: zeros
    want = reference(q, k, v, causal=causal, mask=mask)
    if layout == "tensor_view":
        q = rt.tensor(np.ascontiguousarray(q.transpose(0, 2, 1, 3))).transpose(0, 2, 1, 3)
        k = rt.tensor(k)
    got = attention(q, k, v, causal=causal, mask=mask)
    check(got, want)
    if masked:
        assert not np.asarray(got)[0].any()


def test_causal_is_bottom_right_aligned(isa):
    """Decode with a KV cache: 3 new queries over 10 keys see keys 0..7, 0..8, 0..9."""
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 3, 4, 16), dtype=np.float32)
    k = rng.standard_normal((2, 10, 2, 16), dtype=np.float32)
    v = rng.standard_normal((2, 10, 2, 16), dtype=np.float32)
    got = np.asarray(attention(q, k, v, causal=True))
    check(got, reference(q, k, v, causal=True))
    last = np.asarray(attention(q[:, 2:], k, v, causal=True))
    np.testing.assert_allclose(last, np.asarray(attention(q[:, 2:], k, v)), atol=1e-6)
    # More queries than keys: the first seq_q - seq_k queries attend nothing.
    q_long = rng.standard_normal((1, 12, 2, 16), dtype=np.float32)
    got = np.asarray(attention(q_long, k[:1], v[:1], causal=True))
    check(got, reference(q_long, k[:1], v[:1], causal=True))
    assert not got[0, :2].any()


def test_decode_single_query_long_cache(isa):
    rng = np.random.default_rng(1)
    q = rng.standard_normal((2, 1, 8, 64), dtype=np.float32)
    k = rng.standard_normal((2, 300, 2, 64), dtype=np.float32)
    v = rng.standard_normal((2, 300, 2, 64), dtype=np.float32)
    mask = np.ones((2, 300), dtype=np.int64)
    mask[1, 250:] = 0  # right padding of the shorter sequence
    check(attention(q, k, v, causal=True, mask=mask), reference(q, k, v, causal=True, mask=mask))


@pytest.mark.parametrize("sq,hq,hkv,d", [(1, 9, 3, 64), (2, 4, 1, 128), (1, 8, 1, 96), (3, 2, 1, 64), (1, 2, 2, 32)])
@pytest.mark.parametrize("sk", [1, 17, 129, 300])
@pytest.mark.parametrize("kv_layout", ["cache_view", "bhsd"])
def test_few_query_rows_read_keys_in_place(isa, sq, hq, hkv, d, sk, kv_layout):
    """Tasks of at most 8 query rows (decode: one query per head of a GQA group) read K
    and V rows where they are: a slice of a larger cache, or a [b, h, s, d] layout."""
    rng = np.random.default_rng(sq * 1000 + sk)
    b = 2
    q = rng.standard_normal((b, sq, hq, d), dtype=np.float32)
    if kv_layout == "cache_view":
        cache = rng.standard_normal((2, b, sk + 40, hkv, d), dtype=np.float32) * 3
        k, v = cache[0, :, :sk], cache[1, :, :sk]
    else:
        k = (rng.standard_normal((b, hkv, sk, d), dtype=np.float32) * 3).transpose(0, 2, 1, 3)
        v = rng.standard_normal((b, hkv, sk, d), dtype=np.float32).transpose(0, 2, 1, 3)
    mask = rng.random((b, sk)) < 0.8
    mask[:, -1] = True
    for causal in (False, True):
        for m in (None, mask):
            check(attention(q, k, v, causal=causal, mask=m), reference(q, k, v, causal=causal, mask=m))


@pytest.mark.parametrize("sk,n", [(0, 1), (37, 1), (129, 1), (300, 3), (5, 140)])
def test_appended_keys_equal_the_keys_joined(isa, sk, n):
    """k_append/v_append: keys after k and v, read in place (a decoder's new token beside a
    view of its cache); the mask covers k only, causal alignment counts the appended keys."""
    rng = np.random.default_rng(sk + n)
    b, hq, hkv, d = 2, 6, 2, 64
    cache = rng.standard_normal((2, b, sk + 50, hkv, d), dtype=np.float32)
    k, v = cache[0, :, :sk], cache[1, :, :sk]  # strided views of a larger cache
    ka = rng.standard_normal((b, n, hkv, d), dtype=np.float32)
    va = rng.standard_normal((b, n, hkv, d), dtype=np.float32)
    mask = rng.random((b, sk)) < 0.7
    k_all, v_all = np.concatenate([k, ka], 1), np.concatenate([v, va], 1)
    mask_all = np.concatenate([mask, np.ones((b, n), bool)], 1)
    for sq in (1, n):
        q = rng.standard_normal((b, sq, hq, d), dtype=np.float32)
        for causal in (False, True):
            got = rt.attention(q, k, v, causal=causal, mask=mask, k_append=ka, v_append=va)
            check(got, reference(q, k_all, v_all, causal=causal, mask=mask_all))
    g = rt.Graph()
    ins = [g.input(name, shape) for name, shape in (("q", (b, 1, hq, d)), ("k", (b, "ctx", hkv, d)), ("ka", (b, n, hkv, d)))]
    m = g.input("mask", (b, "ctx"), "bool")
    g.output("out", g.attention(ins[0], ins[1], ins[1], key_padding_mask=m, k_append=ins[2], v_append=ins[2]))
    q = rng.standard_normal((b, 1, hq, d), dtype=np.float32)
    got = g.compile().run({"q": q, "k": k, "ka": ka, "mask": mask})["out"]
    check(got, reference(q, k_all, np.concatenate([k, ka], 1), mask=mask_all))


def test_appended_keys_bad_input_raises():
    q = np.zeros((1, 1, 2, 8), np.float32)
    kv = np.zeros((1, 4, 1, 8), np.float32)
    with pytest.raises(ValueError, match="go together"):
        rt.attention(q, kv, kv, k_append=kv)
    with pytest.raises(rt.ShapeError, match="k_append"):
        rt.attention(q, kv, kv, k_append=np.zeros((1, 1, 2, 8), np.float32), v_append=np.zeros((1, 1, 2, 8), np.float32))
    with pytest.raises(rt.UnsupportedError, match="segments"):
        q4 = np.zeros((1, 4, 2, 8), np.float32)
        rt.attention(q4, kv, kv, segments=[0, 4], k_append=kv[:, :1], v_append=kv[:, :1])
    g = rt.Graph()
    x = g.input("x", (1, 4, 1, 8))
    with pytest.raises(rt.ShapeError, match="k_append"):
        g.attention(g.input("q", (1, 1, 2, 8)), x, x, k_append=g.input("ka", (1, 1, 2, 8)), v_append=x)


@pytest.mark.parametrize("causal", [False, True])
def test_several_query_and_key_blocks(isa, causal):
    """Longer than one tile (128 keys, 128 query rows): the online softmax rescales across blocks."""
    rng = np.random.default_rng(4)
    q = rng.standard_normal((2, 300, 4, 48), dtype=np.float32)
    k = rng.standard_normal((2, 333, 2, 48), dtype=np.float32) * 2
    v = rng.standard_normal((2, 333, 2, 40), dtype=np.float32)
    mask = rng.random((2, 333)) < 0.8
    got = attention(q, k, v, causal=causal, mask=mask)
    check(got, reference(q, k, v, causal=causal, mask=mask))


def test_huge_and_infinite_scores_do_not_make_nan(isa):
    rng = np.random.default_rng(2)
    q = rng.standard_normal((1, 9, 2, 16), dtype=np.float32) * 1e3
    k = rng.standard_normal((1, 70, 2, 16), dtype=np.float32) * 1e3
    v = rng.standard_normal((1, 70, 2, 16), dtype=np.float32)
    # Scores ~1e6: softmax is one-hot in float64 and f32 alike.
    check(attention(q, k, v), reference(q, k, v))
    # Scores overflow f32 to +inf: still finite output.
    big = np.full((1, 9, 2, 16), 1e30, dtype=np.float32)
    out = np.asarray(attention(big, big, v[:, :9]))
    assert np.isfinite(out).all()
    # An explicit huge scale with -inf-like masks: no NaN either.
    out = np.asarray(attention(q, k, v, scale=1e30, mask=np.arange(70)[None, :] % 2 == 0))
    assert np.isfinite(out).all()


def test_strided_inner_dim_and_other_dtypes(isa):
    rng = np.random.default_rng(3)
    q = rng.standard_normal((2, 5, 2, 32), dtype=np.float32)[..., ::2]  # last stride 2: copied
    k = rng.standard_normal((2, 6, 2, 16), dtype=np.float32)
    v = rng.standard_normal((2, 6, 2, 8), dtype=np.float32)
    check(attention(q, k, v), reference(q, k, v))
    q16, k16 = q.astype(np.float16), k.astype(np.float16)
    check(attention(q16, k16, v), reference(q16, k16, v))
    qb = rt.tensor(q).astype("bf16")
    check(attention(qb, k, v, scale=0.5), reference(np.asarray(qb.astype("f32")), k, v, scale=0.5))
    mask = np.array([[1, 0, 2, 0, 1, 1], [0, 0, 0, 3, 0, 0]], dtype=np.int32)
    check(attention(q, k, v, mask=mask), reference(q, k, v, mask=mask))


def test_empty_dimensions():
    z = np.zeros((1, 0, 2, 8), dtype=np.float32)
    q = np.ones((1, 3, 2, 8), dtype=np.float32)
    assert np.asarray(attention(z, q, q)).shape == (1, 0, 2, 8)
    out = np.asarray(attention(q, z, z))  # no keys: zeros
    assert out.shape == (1, 3, 2, 8) and not out.any()


def test_bad_shapes_and_dtypes_raise():
    q = np.zeros((1, 4, 4, 8), dtype=np.float32)
    with pytest.raises(rt.ShapeError, match="attention"):
        attention(q[0], q, q)
    with pytest.raises(rt.ShapeError, match="attention.*multiple"):
        attention(q, np.zeros((1, 4, 3, 8), np.float32), np.zeros((1, 4, 3, 8), np.float32))
    with pytest.raises(rt.ShapeError, match="head_dim"):
        attention(q, np.zeros((1, 4, 4, 7), np.float32), q)
    with pytest.raises(rt.ShapeError, match="attention"):
        attention(q, q, np.zeros((1, 5, 4, 8), np.float32))
    with pytest.raises(rt.ShapeError, match="key_padding_mask"):
        attention(q, q, q, mask=np.ones((1, 3), dtype=bool))
    with pytest.raises(rt.DTypeError, match="attention"):
        attention(q.astype(np.int64), q, q)
    with pytest.raises(rt.DTypeError, match="attention"):
        attention(q, q, q, mask=np.ones((1, 4), dtype=np.float32))
    assert issubclass(rt.ShapeError, ValueError) and issubclass(rt.DTypeError, TypeError)


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 140), min_size=1, max_size=6),
    head_dim=st.sampled_from([1, 16, 33, 64]),
    heads_kv=st.integers(1, 2),
    ratio=st.sampled_from([1, 3]),
    causal=st.booleans(),
    masked=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_segments_equal_each_sequence_alone(isa, lengths, head_dim, heads_kv, ratio, causal, masked, seed):
    """Packed sequences (``segments`` offsets, batch 1) give each sequence what it gets alone."""
    rng = np.random.default_rng(seed)
    total, heads_q = sum(lengths), heads_kv * ratio
    q = rng.standard_normal((1, total, heads_q, head_dim), dtype=np.float32)
    k = rng.standard_normal((1, total, heads_kv, head_dim), dtype=np.float32)
    v = rng.standard_normal((1, total, heads_kv, head_dim), dtype=np.float32)
    mask = rng.random((1, total)) < 0.8 if masked else None
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    want = np.zeros((1, total, heads_q, head_dim))
    for a, b in zip(offsets[:-1], offsets[1:]):
        part = None if mask is None else mask[:, a:b]
        want[:, a:b] = reference(q[:, a:b], k[:, a:b], v[:, a:b], causal=causal, mask=part)
    check(attention(q, k, v, causal=causal, mask=mask, segments=offsets), want)


def test_bad_segments_raise():
    q = np.zeros((1, 6, 2, 8), dtype=np.float32)
    for offsets in ([0, 2, 5], [1, 6], [0, 4, 2, 6], [6]):
        with pytest.raises(rt.ShapeError, match="segments"):
            attention(q, q, q, segments=np.array(offsets, dtype=np.int64))
    with pytest.raises(rt.DTypeError, match="segments"):
        attention(q, q, q, segments=np.array([0.0, 6.0], dtype=np.float32))
    with pytest.raises(rt.ShapeError, match="batch 1"):
        two = np.zeros((2, 3, 2, 8), dtype=np.float32)
        attention(two, two, two, segments=np.array([0, 3]))
    with pytest.raises(rt.ShapeError, match="seq_q == seq_k"):
        attention(q[:, :2], q, q, segments=np.array([0, 2]))
