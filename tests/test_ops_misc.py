"""embedding, concat, where/masked_fill, topk and cast."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rtserve as rt


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16", "i8", "f64"])
def test_embedding_dtypes_and_shapes(dtype):
    w = np.arange(7 * 5, dtype=np.float32).reshape(7, 5)
    tw = rt.tensor(w).astype(dtype)
    ids = np.array([[6, 0, 3], [1, 1, 2]], np.int64)
    out = rt.embedding(tw, ids)
    assert out.shape == (2, 3, 5) and out.dtype == dtype
    np.testing.assert_array_equal(np.asarray(out.astype("f32")), w[ids])
    np.testing.assert_array_equal(np.asarray(rt.embedding(tw, ids.astype(np.int32)[0]).astype("f32")), w[ids[0]])
    assert rt.embedding(tw, np.zeros((0,), np.int64)).shape == (0, 5)


def test_embedding_bad_ids():
    w = np.ones((10, 4), np.float32)
    for bad in (10, -1, 2**40):
        with pytest.raises(IndexError, match=rf"embedding.*{bad}.*10"):
            rt.embedding(w, np.array([0, bad], np.int64))
    with pytest.raises(rt.DTypeError, match="embedding"):
        rt.embedding(w, np.array([0.0]))
    with pytest.raises(rt.ShapeError, match="embedding"):
        rt.embedding(np.ones(4, np.float32), np.array([0]))


def test_concat():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.arange(4, dtype=np.float32).reshape(2, 2)
    np.testing.assert_array_equal(np.asarray(rt.concat([a, b], axis=1)), np.concatenate([a, b], 1))
    np.testing.assert_array_equal(np.asarray(rt.concat([a, a[::-1]], axis=0)), np.concatenate([a, a[::-1]]))
    np.testing.assert_array_equal(np.asarray(rt.concat([a.T, b.T], axis=-2)), np.concatenate([a.T, b.T], -2))
    i = np.array([True, False])
    np.testing.assert_array_equal(np.asarray(rt.concat([i, i, np.zeros(0, bool)])), np.concatenate([i, i]))
    with pytest.raises(rt.ShapeError, match="concat"):
        rt.concat([a, b], axis=0)
    with pytest.raises(rt.DTypeError, match="concat"):
        rt.concat([a, a.astype(np.float64)])
    with pytest.raises(rt.ShapeError, match="concat"):
        rt.concat([])


@given(st.integers(1, 5), st.lists(st.integers(0, 6), min_size=1, max_size=4), st.integers(0, 2))
@settings(max_examples=25, deadline=None)
def test_concat_hypothesis(rows, widths, axis_pick):
    parts = [np.random.default_rng(w).standard_normal((rows, w, 3)).astype(np.float32) for w in widths]
    np.testing.assert_array_equal(np.asarray(rt.concat(parts, axis=1)), np.concatenate(parts, 1))


def test_where_and_masked_fill(isa):
    r = np.random.default_rng(0)
    c = r.random((4, 1, 5)) > 0.5
    a = r.standard_normal((3, 5)).astype(np.float32)
    b = r.standard_normal((4, 3, 1)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(rt.where(c, a, b)), np.where(c, a, b))
    np.testing.assert_array_equal(np.asarray(rt.where(c, a, 0.0)), np.where(c, a, np.float32(0)))
    i = np.arange(5, dtype=np.int16)
    np.testing.assert_array_equal(np.asarray(rt.where(i > 2, i, -i)), np.where(i > 2, i, -i))
    scores = r.standard_normal((2, 6)).astype(np.float32)
    mask = np.triu(np.ones((6, 6), bool), 1)[None, :2]
    got = np.asarray(rt.masked_fill(scores[None], mask, -np.inf))
    np.testing.assert_array_equal(got, np.where(mask, -np.inf, scores[None]))
    all_masked = rt.masked_fill(scores, np.ones((2, 6), bool), float("-inf"))
    np.testing.assert_array_equal(np.asarray(rt.softmax(all_masked)), np.zeros((2, 6)))
    with pytest.raises(rt.DTypeError, match="where"):
        rt.where(np.ones(3, np.float32), a[0, :3], a[0, :3])
    with pytest.raises(rt.DTypeError, match="where"):
        rt.where(c, a, b.astype(np.float64))
    with pytest.raises(rt.ShapeError, match="masked_fill"):
        rt.masked_fill(scores, np.ones((3, 2, 6), bool), 0.0)


@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    masks=st.lists(st.tuples(st.booleans(), st.booleans(), st.booleans()), min_size=4, max_size=4),
    flip=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_where_broadcasts_like_numpy(shape, masks, flip, seed):
    """Each operand keeps or broadcasts (size 1) each dim; rows along the last dim take the
    copy/fill fast paths when the condition is constant along them."""
    r = np.random.default_rng(seed)
    # masks[i][j]: whether operand j (cond, a, b) keeps dim i or broadcasts it.
    cshape, ashape, bshape = ([d if masks[i][j] else 1 for i, d in enumerate(shape)] for j in range(3))
    c = r.random(cshape) > 0.5
    a = r.standard_normal(ashape).astype(np.float32)
    b = r.standard_normal(bshape).astype(np.float32)
    if flip:
        a = a[..., ::-1]  # a negative stride along the last dim
    np.testing.assert_array_equal(np.asarray(rt.where(c, a, b)), np.where(c, a, b))


@pytest.mark.parametrize("n,k", [(1, 1), (7, 3), (33, 33), (257, 5), (17, 0)])
def test_topk(n, k):
    x = np.random.default_rng(n).standard_normal((3, n)).astype(np.float32)
    v, i = rt.topk(x, k)
    order = np.argsort(-x, axis=-1, kind="stable")[:, :k]
    np.testing.assert_array_equal(np.asarray(i), order)
    np.testing.assert_array_equal(np.asarray(v), np.take_along_axis(x, order, -1))
    assert i.dtype == "i64" and v.dtype == "f32"
    v, i = rt.topk(x.T, k, axis=0, largest=False)
    order = np.argsort(x.T, axis=0, kind="stable")[:k]
    np.testing.assert_array_equal(np.asarray(i), order)


def test_topk_ties_nan_ints_and_errors():
    x = np.array([1, 3, 3, np.nan, 2, 3], np.float32)
    v, i = rt.topk(x, 4)
    np.testing.assert_array_equal(np.asarray(i), [3, 1, 2, 5])
    assert np.isnan(np.asarray(v)[0])
    v, i = rt.topk(x, 2, largest=False)
    np.testing.assert_array_equal(np.asarray(i), [0, 4])
    xi = np.array([[5, 1, 5, 9]], np.int64)
    v, i = rt.topk(xi, 3)
    np.testing.assert_array_equal(np.asarray(v), [[9, 5, 5]])
    np.testing.assert_array_equal(np.asarray(i), [[3, 0, 2]])
    with pytest.raises(rt.ShapeError, match=r"topk.*k=5"):
        rt.topk(np.ones(4, np.float32), 5)


def test_cast_alias():
    x = np.array([1.7, -2.5, 0.0], np.float32)
    np.testing.assert_array_equal(np.asarray(rt.cast(x, "i32")), x.astype(np.int32))
    b = rt.cast(x, "bf16")
    assert b.dtype == "bf16"
    np.testing.assert_array_equal(np.asarray(b).astype(np.float32), x.astype(ml_dtypes.bfloat16).astype(np.float32))
    assert rt.cast(rt.tensor(x), np.float64).dtype == "f64"
