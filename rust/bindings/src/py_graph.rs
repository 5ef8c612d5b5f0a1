//! `rt.Graph` (the builder), `rt.Value` (a node's output), `rt.Compiled` (the
//! runnable graph) and `rt.CancelToken`. Building checks shapes at once, so
//! errors raise where the mistake is; `Compiled.run` releases the GIL, and one
//! `Compiled` may run on several threads at the same time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyString, PyTuple};
use pyo3::IntoPyObjectExt;
use rtserve_core::device::{registry, Executable};
use rtserve_core::exec::{CancelToken, Compiled};
use rtserve_core::graph::{AttentionSpec, Dim, Graph, RopeArgs, TensorType, ValueId};
use rtserve_core::kernels::frame::epilogue::Activation;
use rtserve_core::kernels::generic::elementwise::{Binary, Unary};
use rtserve_core::ops::reduce::Reduce;
use rtserve_core::{DType, Tensor};

use crate::errors::{core, detached, dtype_error, guard};
use crate::py_tensor::{parse_dtype, to_tensor, PyTensor};

/// Tells graphs apart, so a Value is never used in a graph it does not belong to.
static NEXT_GRAPH: AtomicU64 = AtomicU64::new(0);

/// The output of one node of a Graph: its symbolic shape and dtype.
#[pyclass(name = "Value", module = "rtserve", frozen)]
pub struct PyValue {
    graph: u64,
    id: ValueId,
    ty: TensorType,
}

fn dims_tuple<'py>(py: Python<'py>, dims: &[Dim]) -> PyResult<Bound<'py, PyTuple>> {
    let items = dims
        .iter()
        .map(|d| match d {
            Dim::Known(n) => n.into_bound_py_any(py),
            Dim::Sym(s) => s.as_str().into_bound_py_any(py),
        })
        .collect::<PyResult<Vec<_>>>()?;
    PyTuple::new(py, items)
}

#[pymethods]
impl PyValue {
    /// Dims: ints, and strs for symbols (e.g. `("batch", 384)`).
    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        dims_tuple(py, &self.ty.dims)
    }

    #[getter]
    fn dtype(&self) -> &'static str {
        self.ty.dtype.name()
    }

    #[getter]
    fn ndim(&self) -> usize {
        self.ty.ndim()
    }

    /// The node id (`%id` in `Compiled.summary()`).
    #[getter]
    fn id(&self) -> usize {
        self.id
    }

    fn __repr__(&self) -> String {
        format!("Value(%{}: {})", self.id, self.ty)
    }
}

/// One dim: an int >= 0 or a symbol name; `-1` too when `allow_infer`.
fn parse_dim(obj: &Bound<'_, PyAny>, allow_infer: bool) -> PyResult<Option<Dim>> {
    if let Ok(s) = obj.cast::<PyString>() {
        let s = s.to_cow()?;
        if s.is_empty() {
            return Err(PyValueError::new_err(
                "a symbolic dim needs a non-empty name",
            ));
        }
        return Ok(Some(Dim::sym(s.as_ref())));
    }
    if obj.is_instance_of::<PyBool>() || !obj.is_instance_of::<PyInt>() {
        return Err(PyTypeError::new_err(format!(
            "a dim must be an int or a symbol name (str), got {}",
            obj.get_type().name()?
        )));
    }
    match obj.extract::<i64>()? {
        -1 if allow_infer => Ok(None),
        n if n >= 0 => Ok(Some(Dim::Known(n as usize))),
        n => Err(PyValueError::new_err(format!(
            "dims must be >= 0{}, got {n}",
            if allow_infer { " (or -1 once)" } else { "" }
        ))),
    }
}

fn parse_shape(obj: &Bound<'_, PyAny>, allow_infer: bool) -> PyResult<Vec<Option<Dim>>> {
    if obj.is_instance_of::<PyString>() || obj.is_instance_of::<PyInt>() {
        return Ok(vec![parse_dim(obj, allow_infer)?]);
    }
    obj.try_iter()?
        .map(|d| parse_dim(&d?, allow_infer))
        .collect()
}

/// Builds a graph node by node; see `Graph.compile`.
///
/// Example: ``g = rt.Graph(); x = g.input("x", ("batch", 384)); g.output("y", g.gelu(x))``
#[pyclass(name = "Graph", module = "rtserve")]
pub struct PyGraph {
    tag: u64,
    graph: Graph,
}

impl PyGraph {
    fn wrap(&self, id: rtserve_core::Result<ValueId>) -> PyResult<PyValue> {
        let id = core(id)?;
        let ty = core(self.graph.value_type(id))?.clone();
        Ok(PyValue {
            graph: self.tag,
            id,
            ty,
        })
    }

    /// A Value of this graph, or a constant made from a tensor-like (a Python
    /// scalar takes `like`'s dtype when given).
    fn value(&mut self, obj: &Bound<'_, PyAny>, like: Option<DType>) -> PyResult<ValueId> {
        if let Ok(v) = obj.cast::<PyValue>() {
            let v = v.get();
            if v.graph != self.tag {
                return Err(PyValueError::new_err(format!(
                    "{} belongs to another Graph",
                    v.__repr__()
                )));
            }
            return Ok(v.id);
        }
        let is_scalar = obj.is_instance_of::<PyFloat>()
            || (obj.is_instance_of::<PyInt>() && !obj.is_instance_of::<PyBool>());
        let t = match like {
            Some(dtype) if is_scalar => {
                // Like the eager ops: no silent truncation of 0.5 to an integer 0.
                if obj.is_instance_of::<PyFloat>() && !dtype.is_float() {
                    return Err(dtype_error(format!(
                        "a float scalar ({obj}) cannot combine with a {dtype} value without promotion; cast the value first"
                    )));
                }
                core(Tensor::from_slice(&[obj.extract::<f64>()?], &[]).and_then(|t| t.cast(dtype)))?
            }
            _ => to_tensor(obj.py(), obj, false)?,
        };
        Ok(self.graph.constant(t))
    }

    fn value_dtype(&self, obj: &Bound<'_, PyAny>) -> Option<DType> {
        obj.cast::<PyValue>().ok().map(|v| v.get().ty.dtype)
    }

    fn opt(&mut self, obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<ValueId>> {
        obj.filter(|o| !o.is_none())
            .map(|o| self.value(o, None))
            .transpose()
    }

    fn binary(
        &mut self,
        op: Binary,
        a: &Bound<'_, PyAny>,
        b: &Bound<'_, PyAny>,
    ) -> PyResult<PyValue> {
        guard(|| {
            let (da, db) = (self.value_dtype(a), self.value_dtype(b));
            let a = self.value(a, db)?;
            let b = self.value(b, da)?;
            let r = self.graph.binary(op, a, b);
            self.wrap(r)
        })
    }

    fn unary(&mut self, op: Unary, x: &Bound<'_, PyAny>) -> PyResult<PyValue> {
        guard(|| {
            let x = self.value(x, None)?;
            let r = self.graph.unary(op, x);
            self.wrap(r)
        })
    }

    fn reduce(
        &mut self,
        kind: Reduce,
        x: &Bound<'_, PyAny>,
        axis: Option<isize>,
        keepdims: bool,
    ) -> PyResult<PyValue> {
        guard(|| {
            let x = self.value(x, None)?;
            let r = self.graph.reduce(kind, x, axis, keepdims);
            self.wrap(r)
        })
    }
}

#[pymethods]
impl PyGraph {
    #[new]
    fn new() -> Self {
        PyGraph {
            tag: NEXT_GRAPH.fetch_add(1, Ordering::Relaxed),
            graph: Graph::new(),
        }
    }

    /// Declares an input; shape items are ints or symbol names (`("batch", 384)`).
    #[pyo3(signature = (name, shape, dtype=None))]
    fn input(
        &mut self,
        name: &str,
        shape: &Bound<'_, PyAny>,
        dtype: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyValue> {
        guard(|| {
            let dims: Vec<Dim> = parse_shape(shape, false)?.into_iter().flatten().collect();
            let dtype = dtype.map(parse_dtype).transpose()?.unwrap_or(DType::F32);
            let r = self.graph.input(name, dims, dtype);
            self.wrap(r)
        })
    }

    /// A fixed tensor (weights); an rt.Tensor is shared, never copied.
    fn constant(&mut self, tensor: &Bound<'_, PyAny>) -> PyResult<PyValue> {
        guard(|| {
            let t = to_tensor(tensor.py(), tensor, false)?;
            let id = self.graph.constant(t);
            self.wrap(Ok(id))
        })
    }

    /// Names `value` as an output of the graph.
    fn output(&mut self, name: &str, value: &Bound<'_, PyAny>) -> PyResult<()> {
        guard(|| {
            let v = self.value(value, None)?;
            core(self.graph.output(name, v))
        })
    }

    fn matmul(&mut self, a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> PyResult<PyValue> {
        guard(|| {
            let (a, b) = (self.value(a, None)?, self.value(b, None)?);
            let r = self.graph.matmul(a, b);
            self.wrap(r)
        })
    }

    /// act(x · wᵀ + bias), w [out, in]; activation None, "relu", "gelu", "gelu_tanh" or "silu".
    #[pyo3(signature = (x, w, bias=None, activation=None))]
    fn linear(
        &mut self,
        x: &Bound<'_, PyAny>,
        w: &Bound<'_, PyAny>,
        bias: Option<&Bound<'_, PyAny>>,
        activation: Option<&str>,
    ) -> PyResult<PyValue> {
        guard(|| {
            let act = match activation {
                None => Activation::None,
                Some(name) => Activation::from_name(name).ok_or_else(|| {
                    PyValueError::new_err(format!(
                        "unknown activation '{name}'; use relu, gelu, gelu_tanh or silu"
                    ))
                })?,
            };
            let (x, w) = (self.value(x, None)?, self.value(w, None)?);
            let bias = self.opt(bias)?;
            let r = self.graph.linear(x, w, bias, act);
            self.wrap(r)
        })
    }

    fn add(&mut self, a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> PyResult<PyValue> {
        self.binary(Binary::Add, a, b)
    }
    fn sub(&mut self, a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> PyResult<PyValue> {
        self.binary(Binary::Sub, a, b)
    }
    fn mul(&mut self, a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> PyResult<PyValue> {
        self.binary(Binary::Mul, a, b)
    }
    fn div(&mut self, a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> PyResult<PyValue> {
        self.binary(Binary::Div, a, b)
    }
    /// Elementwise maximum with broadcasting; NaN propagates.
    fn maximum(&mut self, a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> PyResult<PyValue> {
        self.binary(Binary::Max, a, b)
    }
    /// Elementwise minimum with broadcasting; NaN propagates.
    fn minimum(&mut self, a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> PyResult<PyValue> {
        self.binary(Binary::Min, a, b)
    }
    /// `a ** b` with broadcasting (float tensors).
    fn pow(&mut self, a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> PyResult<PyValue> {
        self.binary(Binary::Pow, a, b)
    }

    fn gelu(&mut self, x: &Bound<'_, PyAny>) -> PyResult<PyValue> {
        self.unary(Unary::Gelu, x)
    }
    fn gelu_tanh(&mut self, x: &Bound<'_, PyAny>) -> PyResult<PyValue> {
        self.unary(Unary::GeluTanh, x)
    }
    fn silu(&mut self, x: &Bound<'_, PyAny>) -> PyResult<PyValue> {
        self.unary(Unary::Silu, x)
    }
    fn relu(&mut self, x: &Bound<'_, PyAny>) -> PyResult<PyValue> {
        self.unary(Unary::Relu, x)
    }
    fn tanh(&mut self, x: &Bound<'_, PyAny>) -> PyResult<PyValue> {
        self.unary(Unary::Tanh, x)
    }
    fn exp(&mut self, x: &Bound<'_, PyAny>) -> PyResult<PyValue> {
        self.unary(Unary::Exp, x)
    }
    fn log(&mut self, x: &Bound<'_, PyAny>) -> PyResult<PyValue> {
        self.unary(Unary::Log, x)
    }
    fn erf(&mut self, x: &Bound<'_, PyAny>) -> PyResult<PyValue> {
        self.unary(Unary::Erf, x)
    }
    fn sigmoid(&mut self, x: &Bound<'_, PyAny>) -> PyResult<PyValue> {
        self.unary(Unary::Sigmoid, x)
    }
    fn sqrt(&mut self, x: &Bound<'_, PyAny>) -> PyResult<PyValue> {
        self.unary(Unary::Sqrt, x)
    }
    fn rsqrt(&mut self, x: &Bound<'_, PyAny>) -> PyResult<PyValue> {
        self.unary(Unary::Rsqrt, x)
    }
    fn neg(&mut self, x: &Bound<'_, PyAny>) -> PyResult<PyValue> {
        self.unary(Unary::Neg, x)
    }
    fn abs(&mut self, x: &Bound<'_, PyAny>) -> PyResult<PyValue> {
        self.unary(Unary::Abs, x)
    }

    #[pyo3(signature = (x, axis=-1))]
    fn softmax(&mut self, x: &Bound<'_, PyAny>, axis: isize) -> PyResult<PyValue> {
        guard(|| {
            let x = self.value(x, None)?;
            let r = self.graph.softmax(x, axis);
            self.wrap(r)
        })
    }

    #[pyo3(signature = (x, axis=-1))]
    fn log_softmax(&mut self, x: &Bound<'_, PyAny>, axis: isize) -> PyResult<PyValue> {
        guard(|| {
            let x = self.value(x, None)?;
            let r = self.graph.log_softmax(x, axis);
            self.wrap(r)
        })
    }

    #[pyo3(signature = (x, weight=None, bias=None, eps=1e-5))]
    fn layer_norm(
        &mut self,
        x: &Bound<'_, PyAny>,
        weight: Option<&Bound<'_, PyAny>>,
        bias: Option<&Bound<'_, PyAny>>,
        eps: f64,
    ) -> PyResult<PyValue> {
        guard(|| {
            let x = self.value(x, None)?;
            let (w, b) = (self.opt(weight)?, self.opt(bias)?);
            let r = self.graph.layer_norm(x, w, b, eps);
            self.wrap(r)
        })
    }

    #[pyo3(signature = (x, weight=None, eps=1e-6))]
    fn rms_norm(
        &mut self,
        x: &Bound<'_, PyAny>,
        weight: Option<&Bound<'_, PyAny>>,
        eps: f64,
    ) -> PyResult<PyValue> {
        guard(|| {
            let x = self.value(x, None)?;
            let w = self.opt(weight)?;
            let r = self.graph.rms_norm(x, w, eps);
            self.wrap(r)
        })
    }

    /// Rotary embedding of x [batch, seq, heads, head_dim]; token s sits at
    /// `positions[b, s]` (integer [batch, seq] or [seq]) or at `offset + s`.
    #[pyo3(signature = (x, theta=10000.0, interleaved=false, positions=None, offset=0, rotary_dim=None, inv_freq=None))]
    #[allow(clippy::too_many_arguments)]
    fn rope(
        &mut self,
        x: &Bound<'_, PyAny>,
        theta: f64,
        interleaved: bool,
        positions: Option<&Bound<'_, PyAny>>,
        offset: i64,
        rotary_dim: Option<usize>,
        inv_freq: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyValue> {
        guard(|| {
            let x = self.value(x, None)?;
            let args = RopeArgs {
                positions: self.opt(positions)?,
                offset,
                theta,
                interleaved,
                inv_freq: self.opt(inv_freq)?,
                rotary_dim,
            };
            let r = self.graph.rope(x, &args);
            self.wrap(r)
        })
    }

    /// Fused attention; `key_padding_mask` is [batch, seq_k], bool or integer, nonzero = attend;
    /// `segments` (integer offsets [n + 1]) packs sequences along seq (batch 1, seq_q == seq_k);
    /// `k_append`/`v_append` (together) are keys and values after k and v along seq, read in
    /// place (a decoder's new tokens beside its cache); the mask covers k only.
    #[pyo3(signature = (q, k, v, causal=false, scale=None, key_padding_mask=None, segments=None, k_append=None, v_append=None))]
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &mut self,
        q: &Bound<'_, PyAny>,
        k: &Bound<'_, PyAny>,
        v: &Bound<'_, PyAny>,
        causal: bool,
        scale: Option<f32>,
        key_padding_mask: Option<&Bound<'_, PyAny>>,
        segments: Option<&Bound<'_, PyAny>>,
        k_append: Option<&Bound<'_, PyAny>>,
        v_append: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyValue> {
        guard(|| {
            let (q, k, v) = (
                self.value(q, None)?,
                self.value(k, None)?,
                self.value(v, None)?,
            );
            let append = match (self.opt(k_append)?, self.opt(v_append)?) {
                (Some(ka), Some(va)) => Some((ka, va)),
                (None, None) => None,
                _ => {
                    return Err(PyValueError::new_err(
                        "attention: k_append and v_append go together (give both or neither)",
                    ))
                }
            };
            let spec = AttentionSpec {
                causal,
                scale,
                key_padding_mask: self.opt(key_padding_mask)?,
                segments: self.opt(segments)?,
                append,
            };
            let r = self.graph.attention_with(q, k, v, spec);
            self.wrap(r)
        })
    }

    fn embedding(
        &mut self,
        weight: &Bound<'_, PyAny>,
        ids: &Bound<'_, PyAny>,
    ) -> PyResult<PyValue> {
        guard(|| {
            let (w, ids) = (self.value(weight, None)?, self.value(ids, None)?);
            let r = self.graph.embedding(w, ids);
            self.wrap(r)
        })
    }

    /// New shape of ints, symbol names and at most one -1.
    fn reshape(&mut self, x: &Bound<'_, PyAny>, shape: &Bound<'_, PyAny>) -> PyResult<PyValue> {
        guard(|| {
            let x = self.value(x, None)?;
            let shape = parse_shape(shape, true)?;
            let r = self.graph.reshape(x, &shape);
            self.wrap(r)
        })
    }

    fn transpose(&mut self, x: &Bound<'_, PyAny>, perm: Vec<usize>) -> PyResult<PyValue> {
        guard(|| {
            let x = self.value(x, None)?;
            let r = self.graph.transpose(x, &perm);
            self.wrap(r)
        })
    }

    #[pyo3(signature = (values, axis=0))]
    fn concat(&mut self, values: Vec<Bound<'_, PyAny>>, axis: isize) -> PyResult<PyValue> {
        guard(|| {
            let ids = values
                .iter()
                .map(|v| self.value(v, None))
                .collect::<PyResult<Vec<_>>>()?;
            let r = self.graph.concat(&ids, axis);
            self.wrap(r)
        })
    }

    /// `x[start:stop:step]` along `axis` (numpy semantics); the result is contiguous.
    #[pyo3(signature = (x, axis, start, stop, step=1))]
    fn slice(
        &mut self,
        x: &Bound<'_, PyAny>,
        axis: isize,
        start: Option<isize>,
        stop: Option<isize>,
        step: isize,
    ) -> PyResult<PyValue> {
        guard(|| {
            let x = self.value(x, None)?;
            let r = self.graph.slice(x, axis, start, stop, step);
            self.wrap(r)
        })
    }

    #[pyo3(signature = (x, axis=None, keepdims=false))]
    fn sum(
        &mut self,
        x: &Bound<'_, PyAny>,
        axis: Option<isize>,
        keepdims: bool,
    ) -> PyResult<PyValue> {
        self.reduce(Reduce::Sum, x, axis, keepdims)
    }

    #[pyo3(signature = (x, axis=None, keepdims=false))]
    fn mean(
        &mut self,
        x: &Bound<'_, PyAny>,
        axis: Option<isize>,
        keepdims: bool,
    ) -> PyResult<PyValue> {
        self.reduce(Reduce::Mean, x, axis, keepdims)
    }

    #[pyo3(signature = (x, axis=None, keepdims=false))]
    fn max(
        &mut self,
        x: &Bound<'_, PyAny>,
        axis: Option<isize>,
        keepdims: bool,
    ) -> PyResult<PyValue> {
        self.reduce(Reduce::Max, x, axis, keepdims)
    }

    #[pyo3(signature = (x, axis=None, keepdims=false))]
    fn min(
        &mut self,
        x: &Bound<'_, PyAny>,
        axis: Option<isize>,
        keepdims: bool,
    ) -> PyResult<PyValue> {
        self.reduce(Reduce::Min, x, axis, keepdims)
    }

    /// i64 index of the first maximum over `axis` (None: of the flattened x).
    #[pyo3(signature = (x, axis=None, keepdims=false))]
    fn argmax(
        &mut self,
        x: &Bound<'_, PyAny>,
        axis: Option<isize>,
        keepdims: bool,
    ) -> PyResult<PyValue> {
        self.reduce(Reduce::ArgMax, x, axis, keepdims)
    }

    /// `cond ? a : b` with broadcasting (cond bool; a Python scalar takes the other's dtype).
    #[pyo3(name = "where")]
    fn where_(
        &mut self,
        cond: &Bound<'_, PyAny>,
        a: &Bound<'_, PyAny>,
        b: &Bound<'_, PyAny>,
    ) -> PyResult<PyValue> {
        guard(|| {
            let cond = self.value(cond, None)?;
            let (da, db) = (self.value_dtype(a), self.value_dtype(b));
            let a = self.value(a, db)?;
            let b = self.value(b, da)?;
            let r = self.graph.where_(cond, a, b);
            self.wrap(r)
        })
    }

    /// x with `value` where the bool `mask` (broadcast to x's shape) is true.
    fn masked_fill(
        &mut self,
        x: &Bound<'_, PyAny>,
        mask: &Bound<'_, PyAny>,
        value: f64,
    ) -> PyResult<PyValue> {
        guard(|| {
            let (x, mask) = (self.value(x, None)?, self.value(mask, None)?);
            let r = self.graph.masked_fill(x, mask, value);
            self.wrap(r)
        })
    }

    /// (values, i64 indices) of the k largest (or smallest) along `axis`, sorted.
    #[pyo3(signature = (x, k, axis=-1, largest=true))]
    fn topk(
        &mut self,
        x: &Bound<'_, PyAny>,
        k: usize,
        axis: isize,
        largest: bool,
    ) -> PyResult<(PyValue, PyValue)> {
        guard(|| {
            let x = self.value(x, None)?;
            let (values, indices) = core(self.graph.topk(x, k, axis, largest))?;
            Ok((self.wrap(Ok(values))?, self.wrap(Ok(indices))?))
        })
    }

    fn cast(&mut self, x: &Bound<'_, PyAny>, dtype: &Bound<'_, PyAny>) -> PyResult<PyValue> {
        guard(|| {
            let x = self.value(x, None)?;
            let dtype = parse_dtype(dtype)?;
            let r = self.graph.cast(x, dtype);
            self.wrap(r)
        })
    }

    /// Freezes the graph for `device` (see `rt.devices()`). With `optimize`
    /// (the default) the passes run first: dead code elimination, constant
    /// folding, CSE, matmul + bias + activation + residual fusion, attention
    /// fusion and weight pre-packing (on the CPU only: see `Device::pass_options`).
    #[pyo3(signature = (device="cpu", optimize=true))]
    fn compile(&self, py: Python<'_>, device: &str, optimize: bool) -> PyResult<PyCompiled> {
        guard(|| {
            let dev = core(registry::get(device))?;
            let graph = &self.graph;
            let options = dev.pass_options();
            let compiled = detached(py, move || {
                if optimize {
                    Compiled::optimized_with(graph, options)
                } else {
                    Compiled::new(graph)
                }
            })?;
            let executable: Arc<dyn Executable> = Arc::from(core(dev.prepare(&compiled))?);
            Ok(PyCompiled {
                inner: Arc::new(compiled),
                executable,
                device: device.to_owned(),
            })
        })
    }

    fn __len__(&self) -> usize {
        self.graph.nodes().len()
    }

    fn __repr__(&self) -> String {
        format!(
            "Graph({} nodes, {} inputs, {} outputs)",
            self.graph.nodes().len(),
            self.graph.inputs().len(),
            self.graph.outputs().len()
        )
    }
}

/// Stops a run from another thread: pass it to `Compiled.run(..., cancel=token)`.
#[pyclass(name = "CancelToken", module = "rtserve", frozen)]
pub struct PyCancelToken {
    inner: CancelToken,
}

#[pymethods]
impl PyCancelToken {
    #[new]
    fn new() -> Self {
        PyCancelToken {
            inner: CancelToken::new(),
        }
    }

    /// Makes the runs holding this token raise CancelledError at their next node.
    fn cancel(&self) {
        self.inner.cancel();
    }

    #[getter]
    fn cancelled(&self) -> bool {
        self.inner.is_cancelled()
    }
}

/// A compiled graph: immutable, safe to run from several threads at once.
#[pyclass(name = "Compiled", module = "rtserve", frozen)]
pub struct PyCompiled {
    inner: Arc<Compiled>,
    /// The program prepared by the device it was compiled for.
    executable: Arc<dyn Executable>,
    device: String,
}

#[pymethods]
impl PyCompiled {
    /// Runs on `inputs` (name -> array-like) and returns name -> rt.Tensor.
    /// Releases the GIL; `timeout` (seconds) or `cancel` raise CancelledError.
    #[pyo3(signature = (inputs, timeout=None, cancel=None))]
    fn run(
        &self,
        py: Python<'_>,
        inputs: &Bound<'_, PyDict>,
        timeout: Option<f64>,
        cancel: Option<PyRef<'_, PyCancelToken>>,
    ) -> PyResult<HashMap<String, PyTensor>> {
        guard(|| {
            let mut map = HashMap::with_capacity(inputs.len());
            for (k, v) in inputs.iter() {
                map.insert(k.extract::<String>()?, to_tensor(py, &v, false)?);
            }
            let base = cancel.map(|c| c.inner.clone()).unwrap_or_default();
            let token = match timeout {
                None => base,
                Some(s) => base.with_timeout(Duration::try_from_secs_f64(s).map_err(|_| {
                    PyValueError::new_err(format!(
                        "timeout must be a number of seconds >= 0, got {s}"
                    ))
                })?),
            };
            let exe = Arc::clone(&self.executable);
            let out = detached(py, move || exe.run(&map, &token))?;
            Ok(out
                .into_iter()
                .map(|(k, t)| (k, PyTensor::new(t)))
                .collect())
        })
    }

    /// The device this program was compiled for.
    #[getter]
    fn device(&self) -> &str {
        &self.device
    }

    /// Turns per-node timing on (or off) for the runs that start from now on; read the
    /// times with `profile()`. CPU programs only: other devices run a program of their own.
    #[pyo3(signature = (on=true))]
    fn enable_profiling(&self, on: bool) -> PyResult<()> {
        if self.device != "cpu" {
            return core(Err(rtserve_core::Error::Unsupported(format!(
                "per-node profiling times the CPU executor; this program runs on '{}'",
                self.device
            ))));
        }
        self.inner.set_profiling(on);
        Ok(())
    }

    /// Where the profiled runs spent their time, largest first: `by="op"` (default) one
    /// dict per op name (`op`, `nodes`, `calls`, `seconds`, `share` of the total), or
    /// `by="node"` one per node (`node`, `op`, `calls`, `seconds`, `share`).
    #[pyo3(signature = (by="op"))]
    fn profile<'py>(&self, py: Python<'py>, by: &str) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let times = self.inner.profile();
        let total: f64 = times.iter().map(|t| t.seconds).sum();
        let share = |s: f64| if total > 0.0 { s / total } else { 0.0 };
        let mut rows = Vec::new();
        match by {
            "node" => {
                let mut times = times;
                times.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
                for t in times {
                    let d = PyDict::new(py);
                    d.set_item("node", t.node)?;
                    d.set_item("op", t.op)?;
                    d.set_item("calls", t.calls)?;
                    d.set_item("seconds", t.seconds)?;
                    d.set_item("share", share(t.seconds))?;
                    rows.push(d);
                }
            }
            "op" => {
                let mut by_op: Vec<(String, usize, u64, f64)> = Vec::new();
                for t in times {
                    match by_op.iter_mut().find(|r| r.0 == t.op) {
                        Some(r) => {
                            r.1 += 1;
                            r.2 += t.calls;
                            r.3 += t.seconds;
                        }
                        None => by_op.push((t.op, 1, t.calls, t.seconds)),
                    }
                }
                by_op.sort_by(|a, b| b.3.total_cmp(&a.3));
                for (op, nodes, calls, seconds) in by_op {
                    let d = PyDict::new(py);
                    d.set_item("op", op)?;
                    d.set_item("nodes", nodes)?;
                    d.set_item("calls", calls)?;
                    d.set_item("seconds", seconds)?;
                    d.set_item("share", share(seconds))?;
                    rows.push(d);
                }
            }
            other => {
                return Err(PyValueError::new_err(format!(
                    "by must be 'op' or 'node', got {other:?}"
                )))
            }
        }
        Ok(rows)
    }

    /// Forgets the times `profile()` has gathered so far.
    fn reset_profile(&self) {
        self.inner.reset_profile();
    }

    /// The nodes (id, op, type, FLOPs) and the memory plan with every symbol = 1.
    fn summary(&self) -> String {
        self.inner.summary()
    }

    /// Arena and plan-cache state over the runs so far: `arena_bytes` (idle
    /// arena memory held for the next runs), `plans_cached` (shape signatures),
    /// `runs`, `in_arena` / `in_place` / `fallback` (node outputs written into
    /// their planned region, over their input, or into a fresh buffer),
    /// `arenas_created`, `arenas_freed`.
    fn memory_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.run_stats();
        let d = PyDict::new(py);
        d.set_item("arena_bytes", self.inner.arena_bytes())?;
        d.set_item("plans_cached", self.inner.plans_cached())?;
        d.set_item("runs", s.runs)?;
        d.set_item("in_arena", s.in_arena)?;
        d.set_item("in_place", s.in_place)?;
        d.set_item("fallback", s.fallback)?;
        d.set_item("arenas_created", s.arenas_created)?;
        d.set_item("arenas_freed", s.arenas_freed)?;
        Ok(d)
    }

    /// The arena plan at concrete dims, e.g. `memory_plan(batch=8, seq=128)`.
    #[pyo3(signature = (**dims))]
    fn memory_plan(
        &self,
        dims: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<HashMap<&'static str, usize>> {
        guard(|| {
            let mut sizes = HashMap::new();
            if let Some(d) = dims {
                for (k, v) in d.iter() {
                    sizes.insert(k.extract::<String>()?, v.extract::<usize>()?);
                }
            }
            let p = core(self.inner.memory_plan(&sizes))?;
            Ok(HashMap::from([
                ("planned_bytes", p.planned_bytes),
                ("lower_bound_bytes", p.lower_bound_bytes),
                ("naive_bytes", p.naive_bytes),
                ("in_place", p.in_place),
            ]))
        })
    }

    /// Symbol names of the inputs, sorted.
    #[getter]
    fn symbols(&self) -> Vec<String> {
        self.inner.symbols()
    }

    /// name -> (shape, dtype) of each input.
    #[getter]
    fn inputs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (name, ty) in self.inner.inputs() {
            d.set_item(name, (dims_tuple(py, &ty.dims)?, ty.dtype.name()))?;
        }
        Ok(d)
    }

    /// name -> (shape, dtype) of each output.
    #[getter]
    fn outputs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (name, ty) in self.inner.outputs() {
            d.set_item(name, (dims_tuple(py, &ty.dims)?, ty.dtype.name()))?;
        }
        Ok(d)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyGraph>()?;
    m.add_class::<PyValue>()?;
    m.add_class::<PyCompiled>()?;
    m.add_class::<PyCancelToken>()?;
    Ok(())
}
