"""Eager tensor operations (names as numpy/torch users expect). Inputs may be rt.Tensor or
anything rt.tensor accepts; results are rt.Tensor. Heavy calls release the GIL.

    import numpy as np
    import rtserve as rt

    x = rt.tensor(np.random.rand(4, 8).astype(np.float32))
    y = rt.softmax(rt.gelu(x * 2.0 + 1.0), axis=-1)
    values, indices = rt.topk(y, 3)
"""

from __future__ import annotations

from ._core import (
    abs,
    add,
    argmax,
    attention,
    cast,
    concat,
    div,
    embedding,
    erf,
    exp,
    gelu,
    gelu_tanh,
    layer_norm,
    log,
    log_softmax,
    masked_fill,
    max,
    maximum,
    mean,
    min,
    minimum,
    mul,
    neg,
    pow,
    relu,
    rms_norm,
    rope,
    rsqrt,
    sigmoid,
    silu,
    softmax,
    sqrt,
    sub,
    sum,
    tanh,
    topk,
    where,
)

__all__: list[str] = [
    "abs",
    "add",
    "argmax",
    "attention",
    "cast",
    "concat",
    "div",
    "embedding",
    "erf",
    "exp",
    "gelu",
    "gelu_tanh",
    "layer_norm",
    "log",
    "log_softmax",
    "masked_fill",
    "max",
    "maximum",
    "mean",
    "min",
    "minimum",
    "mul",
    "neg",
    "pow",
    "relu",
    "rms_norm",
    "rope",
    "rsqrt",
    "sigmoid",
    "silu",
    "softmax",
    "sqrt",
    "sub",
    "sum",
    "tanh",
    "topk",
    "where",
]
