"""rtserve: an open, vendor-neutral inference runtime.

A Rust core (tensors, weight formats, kernels) with a thin Python layer::

    import numpy as np
    import rtserve as rt

    t = rt.tensor(np.arange(6, dtype=np.float32).reshape(2, 3))   # zero-copy
    w = rt.load_safetensors("model.safetensors")                  # mmap-backed
    np.asarray(w["embeddings.word_embeddings.weight"])            # zero-copy, read-only
"""

from __future__ import annotations

import os as _os

# Mesa's Vulkan device-select layer prints "XDG_RUNTIME_DIR is invalid" on headless machines
# when the wgpu device looks for an adapter; it only reorders GPUs, which wgpu does itself.
if "XDG_RUNTIME_DIR" not in _os.environ:
    _os.environ.setdefault("NODEVICE_SELECT", "1")

from ._core import (
    DTYPES,
    CancelledError,
    CancelToken,
    Compiled,
    DeviceError,
    DTypeError,
    Graph,
    OutOfMemoryError,
    PackedWeight,
    RtserveError,
    ShapeError,
    Tensor,
    UnsupportedError,
    Value,
    WeightsError,
    __version__,
    available_isas,
    cpu_features,
    devices,
    from_dlpack,
    isa,
    linear,
    local_threads,
    matmul,
    num_threads,
    peak_gflops,
    prepack,
    release_memory,
    set_isa,
    set_local_threads,
    set_num_threads,
    tensor,
)
from . import ops
from .ops import *  # noqa: F403  (the eager ops; ops.__all__ lists them)
from .models import DecoderModel, EncoderModel, Generation, load
from .tokenizer import Tokenizer
from .weights import load_safetensors, save_safetensors

__all__ = [
    "DTYPES",
    "CancelToken",
    "CancelledError",
    "Compiled",
    "DTypeError",
    "DeviceError",
    "Graph",
    "OutOfMemoryError",
    "PackedWeight",
    "RtserveError",
    "ShapeError",
    "Tensor",
    "UnsupportedError",
    "DecoderModel",
    "EncoderModel",
    "Generation",
    "Tokenizer",
    "Value",
    "WeightsError",
    "__version__",
    "available_isas",
    "cpu_features",
    "devices",
    "from_dlpack",
    "isa",
    "linear",
    "matmul",
    "load",
    "load_safetensors",
    "local_threads",
    "num_threads",
    "peak_gflops",
    "prepack",
    "release_memory",
    "save_safetensors",
    "set_isa",
    "set_local_threads",
    "set_num_threads",
    "tensor",
    *ops.__all__,
]
