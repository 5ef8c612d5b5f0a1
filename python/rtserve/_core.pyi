"""Type stubs for the compiled extension ``rtserve._core``."""

from collections.abc import Sequence
from os import PathLike
from typing import Any, Literal

import numpy as np

__version__: str
DTYPES: list[str]

class RtserveError(Exception): ...
class ShapeError(RtserveError, ValueError): ...
class DTypeError(RtserveError, TypeError): ...
class WeightsError(RtserveError, ValueError): ...
class DeviceError(RtserveError, RuntimeError): ...
class OutOfMemoryError(RtserveError, MemoryError): ...
class UnsupportedError(RtserveError, NotImplementedError): ...
class CancelledError(RtserveError, RuntimeError): ...

class Tensor:
    """An n-dimensional array held by rtserve; views share storage."""

    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def dtype(self) -> str: ...
    @property
    def strides(self) -> tuple[int, ...]: ...
    @property
    def offset(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def ndim(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def storage_kind(self) -> str: ...
    @property
    def writable(self) -> bool: ...
    @property
    def T(self) -> Tensor: ...
    def __len__(self) -> int: ...
    def __getitem__(self, key: Any) -> Tensor: ...
    def is_contiguous(self) -> bool: ...
    def contiguous(self) -> Tensor: ...
    def reshape(self, *shape: int | Sequence[int]) -> Tensor: ...
    def transpose(self, *axes: int | Sequence[int]) -> Tensor: ...
    def permute(self, *dims: int | Sequence[int]) -> Tensor: ...
    def expand(self, *shape: int | Sequence[int]) -> Tensor: ...
    def astype(self, dtype: Any) -> Tensor: ...
    def numpy(self) -> np.ndarray: ...
    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray: ...
    def tolist(self) -> Any: ...
    # Arithmetic (rt.add etc. with broadcasting; a Python scalar takes the tensor's dtype).
    def __add__(self, other: ArrayLike) -> Tensor: ...
    def __radd__(self, other: ArrayLike) -> Tensor: ...
    def __sub__(self, other: ArrayLike) -> Tensor: ...
    def __rsub__(self, other: ArrayLike) -> Tensor: ...
    def __mul__(self, other: ArrayLike) -> Tensor: ...
    def __rmul__(self, other: ArrayLike) -> Tensor: ...
    def __truediv__(self, other: ArrayLike) -> Tensor: ...
    def __rtruediv__(self, other: ArrayLike) -> Tensor: ...
    def __pow__(self, other: ArrayLike) -> Tensor: ...
    def __rpow__(self, other: ArrayLike) -> Tensor: ...
    def __neg__(self) -> Tensor: ...
    def __abs__(self) -> Tensor: ...
    def sum(self, axis: int | None = None, keepdims: bool = False) -> Tensor: ...
    def mean(self, axis: int | None = None, keepdims: bool = False) -> Tensor: ...
    def max(self, axis: int | None = None, keepdims: bool = False) -> Tensor: ...
    def min(self, axis: int | None = None, keepdims: bool = False) -> Tensor: ...
    def argmax(self, axis: int | None = None, keepdims: bool = False) -> Tensor: ...
    def softmax(self, axis: int = -1) -> Tensor: ...
    def exp(self) -> Tensor: ...
    def log(self) -> Tensor: ...
    def sqrt(self) -> Tensor: ...
    def __dlpack__(
        self,
        *,
        stream: Any = None,
        max_version: tuple[int, int] | None = None,
        dl_device: tuple[int, int] | None = None,
        copy: bool | None = None,
    ) -> Any: ...
    def __dlpack_device__(self) -> tuple[int, int]: ...

def tensor(obj: Any, dtype: Any = None) -> Tensor: ...
def from_dlpack(obj: Any) -> Tensor: ...
def load_safetensors_file(path: str | PathLike[str]) -> tuple[list[tuple[str, Tensor]], dict[str, str]]: ...
def save_safetensors_file(
    tensors: list[tuple[str, Tensor]], path: str | PathLike[str], metadata: dict[str, str] | None = None
) -> None: ...
def _debug_panic(detach: bool) -> None: ...

# --- runtime settings --------------------------------------------------------
def isa() -> str: ...
def set_isa(name: str) -> None: ...
def available_isas() -> list[str]: ...
def cpu_features() -> dict[str, bool]: ...
def devices() -> list[dict[str, object]]:
    """Devices this process knows: name, description (e.g. ISA tier), available."""
def num_threads() -> int:
    """Threads the kernels called from this thread use: its own pool's size (set_local_threads),
    else the shared pool's (RTSERVE_NUM_THREADS, default the physical cores)."""
def set_num_threads(threads: int) -> None:
    """Resizes the runtime's shared thread pool (1..1024)."""
def set_local_threads(threads: int | None) -> None:
    """Gives the calling thread a pool of ``threads`` threads of its own (itself and threads - 1
    helpers; 1: the thread alone) for the kernels it calls, instead of the shared pool; None
    goes back to the shared pool. Several threads each running a model on their own share of
    the cores (the server's model instances) then never wait for one another's threads. The
    pool ends with the thread."""
def local_threads() -> int | None:
    """The size of the calling thread's own pool, or None when it uses the shared pool."""
def release_memory() -> int:
    """Frees the large freed buffers kept for reuse (at most 64 MiB; reused only for outputs of
    the same size); returns the bytes freed. The server calls it when its queues drain."""
def peak_gflops(kind: str = "f32", isa: str | None = None) -> float:
    """Measured peak GFLOP/s at the current thread count: "f32" FMA, "bf16" dot (AVX512_BF16) or
    "i8" dot (AVX512_VNNI, GOP/s); UnsupportedError where the CPU lacks the instruction."""

# --- ops ---------------------------------------------------------------------
# Eager ops. Arguments: an rt.Tensor or anything rt.tensor accepts (ArrayLike).
ArrayLike = Tensor | np.ndarray | float | int | Sequence[Any]

def add(a: ArrayLike, b: ArrayLike) -> Tensor:
    """a + b with numpy broadcasting; same dtype (no promotion), ints wrap."""
def sub(a: ArrayLike, b: ArrayLike) -> Tensor:
    """a - b with broadcasting."""
def mul(a: ArrayLike, b: ArrayLike) -> Tensor:
    """a * b with broadcasting."""
def div(a: ArrayLike, b: ArrayLike) -> Tensor:
    """a / b with broadcasting (float dtypes only)."""
def maximum(a: ArrayLike, b: ArrayLike) -> Tensor:
    """Elementwise max with broadcasting; NaN propagates."""
def minimum(a: ArrayLike, b: ArrayLike) -> Tensor:
    """Elementwise min with broadcasting; NaN propagates."""
def pow(a: ArrayLike, b: ArrayLike) -> Tensor:
    """a ** b with broadcasting (float dtypes only)."""
def exp(x: ArrayLike) -> Tensor:
    """e**x (f32 SIMD: within 2 ulp)."""
def log(x: ArrayLike) -> Tensor:
    """Natural log; NaN below 0, -inf at 0."""
def tanh(x: ArrayLike) -> Tensor:
    """Hyperbolic tangent."""
def erf(x: ArrayLike) -> Tensor:
    """Error function."""
def gelu(x: ArrayLike) -> Tensor:
    """GELU, erf form: 0.5 * x * (1 + erf(x / sqrt(2)))."""
def gelu_tanh(x: ArrayLike) -> Tensor:
    """GELU, tanh approximation."""
def silu(x: ArrayLike) -> Tensor:
    """x * sigmoid(x)."""
def relu(x: ArrayLike) -> Tensor:
    """max(x, 0); floats and ints; NaN propagates."""
def sigmoid(x: ArrayLike) -> Tensor:
    """1 / (1 + exp(-x))."""
def sqrt(x: ArrayLike) -> Tensor:
    """Square root."""
def rsqrt(x: ArrayLike) -> Tensor:
    """1 / sqrt(x)."""
def neg(x: ArrayLike) -> Tensor:
    """-x; floats and ints."""
def abs(x: ArrayLike) -> Tensor:
    """|x|; floats and ints."""
def sum(x: ArrayLike, axis: int | None = None, keepdims: bool = False) -> Tensor:
    """Sum over axis (None: all); ints/bool give i64; empty gives 0."""
def mean(x: ArrayLike, axis: int | None = None, keepdims: bool = False) -> Tensor:
    """Mean over axis (None: all); ints give f64; empty gives NaN."""
def max(x: ArrayLike, axis: int | None = None, keepdims: bool = False) -> Tensor:
    """Max over axis (None: all); NaN propagates; empty raises ShapeError."""
def min(x: ArrayLike, axis: int | None = None, keepdims: bool = False) -> Tensor:
    """Min over axis (None: all); NaN propagates; empty raises ShapeError."""
def argmax(x: ArrayLike, axis: int | None = None, keepdims: bool = False) -> Tensor:
    """i64 index of the first max (first NaN if any); None: of the flattened tensor."""
def softmax(x: ArrayLike, axis: int = -1) -> Tensor:
    """Stable softmax; an all -inf slice gives zeros."""
def log_softmax(x: ArrayLike, axis: int = -1) -> Tensor:
    """Stable log-softmax; an all -inf slice gives -inf."""
def layer_norm(
    x: ArrayLike, weight: ArrayLike | None = None, bias: ArrayLike | None = None, eps: float = 1e-5
) -> Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias over the last dim."""
def rms_norm(x: ArrayLike, weight: ArrayLike | None = None, eps: float = 1e-6) -> Tensor:
    """x / sqrt(mean(x**2) + eps) * weight over the last dim (HF Llama)."""
def rope(
    x: ArrayLike,
    positions: ArrayLike | None = None,
    offset: int = 0,
    theta: float = 10000.0,
    interleaved: bool = False,
    inv_freq: ArrayLike | None = None,
    rotary_dim: int | None = None,
) -> Tensor:
    """Rotary embedding of x [batch, seq, heads, head_dim]; half-rotation (HF) or interleaved."""
def embedding(weight: ArrayLike, ids: ArrayLike) -> Tensor:
    """weight[ids]: shape [*ids.shape, dim]; out-of-range ids raise IndexError."""
def concat(tensors: Sequence[ArrayLike], axis: int = 0) -> Tensor:
    """Joins tensors of one dtype along axis."""
def where(cond: ArrayLike, a: ArrayLike, b: ArrayLike) -> Tensor:
    """cond ? a : b with broadcasting; cond is bool."""
def masked_fill(x: ArrayLike, mask: ArrayLike, value: float) -> Tensor:
    """x with value where the bool mask (broadcast to x) is true."""
def topk(x: ArrayLike, k: int, axis: int = -1, largest: bool = True) -> tuple[Tensor, Tensor]:
    """(values, i64 indices) of the k largest/smallest, sorted; ties by lower index; NaN is largest."""
def cast(x: ArrayLike, dtype: Any) -> Tensor:
    """A converted copy (same as x.astype(dtype))."""

# --- attention ---------------------------------------------------------------
def attention(
    q: ArrayLike,
    k: ArrayLike,
    v: ArrayLike,
    *,
    causal: bool = False,
    scale: float | None = None,
    mask: ArrayLike | None = None,
    segments: ArrayLike | None = None,
    k_append: ArrayLike | None = None,
    v_append: ArrayLike | None = None,
) -> Tensor:
    """Fused softmax(q kᵀ·scale + mask) v; q [b, sq, hq, d], k [b, sk, hkv, d], v [b, sk, hkv, dv] -> f32 [b, sq, hq, dv].

    Grouped-query heads (hq a multiple of hkv); causal is bottom-right aligned (query i sees key j
    iff j <= i + sk - sq); scale defaults to 1/sqrt(d); mask [b, sk], bool/int, nonzero = attend;
    rows that attend nothing are zeros. f16/bf16 inputs are converted to f32. Memory O(seq).
    segments packs sequences of different lengths into one (FlashAttention's cu_seqlens):
    integer offsets [n + 1] from 0 to seq, batch 1 and sq == sk; rows o[i]:o[i+1] attend only
    each other (causal counted from o[i]).
    k_append / v_append ([b, n, hkv, d] and [b, n, hkv, dv], given together) are keys and values
    after k and v along seq, read in place: a decoder passes its cache view as k, v and the new
    tokens here, with no copy to join them. mask covers k only (appended keys are always
    attended); causal alignment counts them (sk + n keys). Not with segments.
    Example: ``rt.attention(q, k, v, causal=True)``;
    ``rt.attention(q, k, v, segments=[0, 5, 12])`` (two sequences of 5 and 7 tokens);
    ``rt.attention(q_new, cache_k[:, :n], cache_v[:, :n], k_append=k_new, v_append=v_new)``
    """

# --- graph -------------------------------------------------------------------
Dim = int | str
ValueLike = Value | ArrayLike

class Value:
    """The output of one graph node; dims are ints or symbol names."""

    @property
    def shape(self) -> tuple[Dim, ...]: ...
    @property
    def dtype(self) -> str: ...
    @property
    def ndim(self) -> int: ...
    @property
    def id(self) -> int: ...

class Graph:
    """Builds a graph; each method checks shapes at once (ShapeError/DTypeError).

    Operands are Values of this graph or tensor-likes (made constants; a Python scalar
    takes the other operand's dtype). Example::

        g = rt.Graph(); x = g.input("x", ("batch", 384))
        g.output("y", g.gelu(g.linear(x, w, b))); out = g.compile().run({"x": arr})["y"]
    """

    def __init__(self) -> None: ...
    def __len__(self) -> int: ...
    def input(self, name: str, shape: Sequence[Dim], dtype: Any = "f32") -> Value:
        """A named input; shape items are ints or symbols such as "batch"."""
    def constant(self, tensor: ArrayLike) -> Value:
        """A fixed tensor (weights); an rt.Tensor is shared, never copied."""
    def output(self, name: str, value: Value) -> None: ...
    def matmul(self, a: ValueLike, b: ValueLike) -> Value: ...
    def linear(
        self, x: ValueLike, w: ValueLike, bias: ValueLike | None = None, activation: str | None = None
    ) -> Value:
        """act(x · wᵀ + bias), w [out, in]; activation relu, gelu, gelu_tanh or silu."""
    def add(self, a: ValueLike, b: ValueLike | float) -> Value: ...
    def sub(self, a: ValueLike, b: ValueLike | float) -> Value: ...
    def mul(self, a: ValueLike, b: ValueLike | float) -> Value: ...
    def div(self, a: ValueLike, b: ValueLike | float) -> Value: ...
    def maximum(self, a: ValueLike, b: ValueLike | float) -> Value:
        """Elementwise maximum with broadcasting; NaN propagates."""
    def minimum(self, a: ValueLike, b: ValueLike | float) -> Value:
        """Elementwise minimum with broadcasting; NaN propagates."""
    def pow(self, a: ValueLike, b: ValueLike | float) -> Value:
        """a ** b with broadcasting (float tensors)."""
    def exp(self, x: ValueLike) -> Value: ...
    def log(self, x: ValueLike) -> Value: ...
    def tanh(self, x: ValueLike) -> Value: ...
    def erf(self, x: ValueLike) -> Value: ...
    def gelu(self, x: ValueLike) -> Value: ...
    def gelu_tanh(self, x: ValueLike) -> Value: ...
    def silu(self, x: ValueLike) -> Value: ...
    def relu(self, x: ValueLike) -> Value: ...
    def sigmoid(self, x: ValueLike) -> Value: ...
    def sqrt(self, x: ValueLike) -> Value: ...
    def rsqrt(self, x: ValueLike) -> Value: ...
    def neg(self, x: ValueLike) -> Value: ...
    def abs(self, x: ValueLike) -> Value: ...
    def softmax(self, x: ValueLike, axis: int = -1) -> Value: ...
    def log_softmax(self, x: ValueLike, axis: int = -1) -> Value: ...
    def layer_norm(
        self, x: ValueLike, weight: ValueLike | None = None, bias: ValueLike | None = None, eps: float = 1e-5
    ) -> Value: ...
    def rms_norm(self, x: ValueLike, weight: ValueLike | None = None, eps: float = 1e-6) -> Value: ...
    def rope(
        self,
        x: ValueLike,
        theta: float = 10000.0,
        interleaved: bool = False,
        positions: ValueLike | None = None,
        offset: int = 0,
        rotary_dim: int | None = None,
        inv_freq: ValueLike | None = None,
    ) -> Value:
        """Rotary embedding of x [batch, seq, heads, head_dim] (head_dim a known int).

        Token s sits at positions[b, s] (integer [batch, seq] or [seq]) or at offset + s;
        rotary_dim (even) leading dims of each head rotate; inv_freq [rotary_dim / 2] overrides theta.
        """
    def attention(
        self,
        q: ValueLike,
        k: ValueLike,
        v: ValueLike,
        causal: bool = False,
        scale: float | None = None,
        key_padding_mask: ValueLike | None = None,
        segments: ValueLike | None = None,
        k_append: ValueLike | None = None,
        v_append: ValueLike | None = None,
    ) -> Value:
        """Fused attention, BSHD layout; result f32 [batch, seq_q, heads_q, head_dim_v].

        key_padding_mask is [batch, seq_k], bool or integer, nonzero = attend. segments (integer
        offsets [n + 1]) packs sequences along seq; k_append / v_append are keys and values after
        k and v, read in place; both as in ``rt.attention``. Both CPU only so far (the cuda and
        wgpu devices refuse them with UnsupportedError at compile).
        """
    def embedding(self, weight: ValueLike, ids: ValueLike) -> Value: ...
    def reshape(self, x: ValueLike, shape: Sequence[Dim]) -> Value:
        """Ints, symbols and one -1 (a number or one symbol of x, never a product of symbols)."""
    def transpose(self, x: ValueLike, perm: Sequence[int]) -> Value: ...
    def concat(self, values: Sequence[ValueLike], axis: int = 0) -> Value: ...
    def slice(self, x: ValueLike, axis: int, start: int | None, stop: int | None, step: int = 1) -> Value:
        """x[start:stop:step] along axis (numpy semantics), contiguous; a symbolic axis only whole.

        Example: ``k = g.slice(qkv, -1, hidden, 2 * hidden)``
        """
    def sum(self, x: ValueLike, axis: int | None = None, keepdims: bool = False) -> Value:
        """Sum (integers and bool give i64)."""
    def mean(self, x: ValueLike, axis: int | None = None, keepdims: bool = False) -> Value:
        """Mean (integers and bool give f64)."""
    def max(self, x: ValueLike, axis: int | None = None, keepdims: bool = False) -> Value: ...
    def min(self, x: ValueLike, axis: int | None = None, keepdims: bool = False) -> Value: ...
    def argmax(self, x: ValueLike, axis: int | None = None, keepdims: bool = False) -> Value:
        """i64 index of the first max (first NaN if any); None: of the flattened x."""
    def where(self, cond: ValueLike, a: ValueLike | float, b: ValueLike | float) -> Value:
        """cond ? a : b with broadcasting; cond is bool."""
    def masked_fill(self, x: ValueLike, mask: ValueLike, value: float) -> Value:
        """x with value where the bool mask (broadcast to x's shape) is true."""
    def topk(self, x: ValueLike, k: int, axis: int = -1, largest: bool = True) -> tuple[Value, Value]:
        """(values, i64 indices) of the k largest/smallest along a known axis, sorted."""
    def cast(self, x: ValueLike, dtype: Any) -> Value: ...
    def compile(self, device: str = "cpu", optimize: bool = True) -> Compiled:
        """Freezes the graph, after the optimization passes unless optimize=False.

        An unknown device raises DeviceError listing the available ones.
        """

class CancelToken:
    """Cancels runs from another thread: ``m.run(inputs, cancel=token)``; ``token.cancel()``."""

    def __init__(self) -> None: ...
    def cancel(self) -> None: ...
    @property
    def cancelled(self) -> bool: ...

class Compiled:
    """A compiled graph: immutable; several threads may run it at once (GIL released)."""

    def run(
        self, inputs: dict[str, ArrayLike], timeout: float | None = None, cancel: CancelToken | None = None
    ) -> dict[str, Tensor]:
        """Runs the graph; raises CancelledError when cancelled or past `timeout` seconds."""
    def summary(self) -> str:
        """One line per node (op, type, FLOPs) and the memory plan with every symbol = 1."""
    def memory_plan(self, **dims: int) -> dict[str, int]:
        """planned_bytes, lower_bound_bytes, naive_bytes (and in_place) at concrete dims."""
    def memory_stats(self) -> dict[str, int]:
        """Arena and plan-cache counters over the runs so far.

        Keys: arena_bytes (idle arena memory held), plans_cached, runs, in_arena,
        in_place, fallback, arenas_created, arenas_freed. An idle arena more than
        twice the largest need of the last 8 runs is freed.
        """
    def enable_profiling(self, on: bool = True) -> None:
        """Times every node of the runs that start from now on (read with `profile()`).

        CPU programs only (UnsupportedError on another device). Off, a run pays one flag
        check; on, two clock reads per node.
        """
    def profile(self, by: Literal["op", "node"] = "op") -> list[dict[str, Any]]:
        """Where the profiled runs spent their time, largest first.

        by="op": one dict per op name with op, nodes, calls, seconds and share (of the
        profiled total); by="node": one per node with node (its id in `summary()`), op,
        calls, seconds, share. A node's time covers its kernel and the executor's work
        around it.
        """
    def reset_profile(self) -> None:
        """Forgets the times gathered so far."""
    @property
    def device(self) -> str:
        """The device this graph was compiled for."""
    @property
    def symbols(self) -> list[str]: ...
    @property
    def inputs(self) -> dict[str, tuple[tuple[Dim, ...], str]]: ...
    @property
    def outputs(self) -> dict[str, tuple[tuple[Dim, ...], str]]: ...
